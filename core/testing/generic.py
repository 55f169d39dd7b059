"""Contracts every component meets, whatever its kind (``component.*``).

- ``component.builds``: the default options build, inside a real run; drawn options build or are
  refused with a clear ``BadInput``; the built object offers what its kind promises.
- ``component.config_round_trip``: options survive unstructure -> JSON -> structure, alone and
  inside the whole run config (which checkpoints store), with the same config hash.
- ``component.checkpoint_round_trip``: the state a checkpoint holds is what a resumed run holds
  after restoring it, bit for bit, and the resumed run ends exactly where the uninterrupted one
  does.
- ``component.deterministic``: two runs with the same seed agree bit for bit, step by step.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from phasetrain import hookimpl
from phasetrain.testing.bits import differences, tree_map
from phasetrain.testing.contract import GENERIC, contract
from phasetrain.testing.recorder import HookRecorder

@contract("component.builds", GENERIC, examples=4)
def builds(subject: Any, data: Any) -> None:
    """The default options build in a real run; drawn ones build or raise a clear BadInput."""
    _check_built(subject, subject.default_options(), default=True)
    _check_built(subject, data.draw(subject.options(small=True), label="options"), default=False)


def _check_built(subject: Any, options: Any, default: bool) -> None:
    trainer = subject.trainer(options, default=default)
    obj = subject.built(trainer)
    from phasetrain.types import missing

    protocol = subject.registry.kinds[subject.kind].protocol
    if obj is None and protocol is not None:
        subject.fail(f"with options {options!r} the run holds no {subject.kind} (the factory returned None)")
    if subject.kind == "optimizer":
        import torch

        if not isinstance(obj, torch.optim.Optimizer):
            subject.fail(f"built a {type(obj).__name__}, which is not a torch.optim.Optimizer")
    lacks = missing(obj, protocol) if protocol is not None and obj is not None else []
    if lacks:
        subject.fail(f"built a {type(obj).__name__}, which lacks {', '.join(lacks)} "
                     f"(what a {subject.kind} must offer: phasetrain.types.{protocol.__name__})")


@contract("component.config_round_trip", GENERIC, examples=25)
def config_round_trip(subject: Any, data: Any) -> None:
    """Options survive unstructure -> JSON -> structure, alone and inside a whole run config."""
    from phasetrain.config import Config

    options = data.draw(subject.options(), label="options")
    unstructured = subject.unstructure(options)
    try:
        text = json.dumps(unstructured, allow_nan=False)
    except (TypeError, ValueError) as exc:
        subject.fail(f"options {options!r} unstructure to {unstructured!r}, which is not JSON: {exc}")
    back = subject.converter.structure(json.loads(text), subject.options_class)
    if back != options:
        subject.fail(f"options {options!r} came back from {text} as {back!r}")
    config = subject.config(subject.raw(options))
    inside = _options_in(subject, config)
    if inside != options:
        subject.fail(f"options {options!r} came back from a run config as {inside!r}")
    first = subject.converter.unstructure(config, Config)
    again = subject.config(json.loads(json.dumps(first, allow_nan=False)))
    second = subject.converter.unstructure(again, Config)
    if first != second:
        subject.fail(f"the run config changed on a round trip: {first!r} -> {second!r}")
    if config.hash() != again.hash():
        subject.fail("the run config's hash changed on a round trip")


def _options_in(subject: Any, config: Any) -> Any:
    section = config.section(subject.kind)
    return section[subject.name].options if subject.registry.kinds[subject.kind].many else section.options


class SavedAt:
    """Where each checkpoint of a run went (``save_end``), by step."""

    def __init__(self) -> None:
        self.paths: dict[int, Any] = {}

    @hookimpl
    def save_end(self, step: int, path: Any) -> None:
        self.paths[step] = path


@contract("component.checkpoint_round_trip", GENERIC, examples=2)
def checkpoint_round_trip(subject: Any, data: Any) -> None:
    """Checkpoint -> restore is the identity on the whole state, and resuming changes nothing."""
    options = data.draw(subject.options(small=True), label="options")
    steps = subject.settings.steps
    half = steps // 2
    cadence = {"checkpoint_every": half, "keep_checkpoints": steps}
    first_saves, second_saves = SavedAt(), SavedAt()
    first = subject.trainer(options, out_dir=subject.run_dir(), run=cadence, hooks=[first_saves])
    subject.fit(first, options)
    _path, saved, _meta = first.store.latest(first_saves.paths[half])

    second = subject.trainer(options, out_dir=subject.run_dir(), run=cadence, hooks=[second_saves])
    second.load_state_dict(saved)
    restored = tree_map(second.checkpoint_state(), lambda t: t.cpu())  # as loaded: on the host
    diff = differences(saved, restored, volatile=subject.settings.volatile)
    if diff:
        subject.fail(f"the checkpoint written at step {half} is not what a resumed run holds after "
                     "restoring it:\n  " + "\n  ".join(diff))
    subject.fit(second, options)
    ended = [t.store.latest(s.paths[steps])[1] for t, s in ((first, first_saves), (second, second_saves))]
    diff = differences(ended[0], ended[1], volatile=subject.settings.volatile)
    if diff:
        subject.fail(f"a run resumed at step {half} of {steps} ends in another state than the run that "
                     "never stopped:\n  " + "\n  ".join(diff))


@contract("component.deterministic", GENERIC, examples=2)
def deterministic(subject: Any, data: Any) -> None:
    """Two runs from the same seed give the same losses and the same final state, bit for bit."""
    options = data.draw(subject.options(small=True), label="options")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    runs = []
    for _ in range(2):
        recorder = HookRecorder()
        trainer = subject.trainer(options, seed=seed, hooks=[recorder])
        subject.fit(trainer, options)
        runs.append((recorder, trainer.state_dict()))
    (rec_a, state_a), (rec_b, state_b) = runs
    if rec_a.events != rec_b.events:
        subject.fail(f"two runs with seed {seed} fired different hooks: {rec_a.events} vs {rec_b.events}")
    diff = differences(rec_a.losses, rec_b.losses, "losses")
    diff += differences(state_a, state_b, volatile=subject.settings.volatile)
    if diff:
        subject.fail(f"two runs with seed {seed} differ:\n  " + "\n  ".join(diff))
