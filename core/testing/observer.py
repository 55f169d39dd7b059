"""Contracts of observers (``observer.*``): loggers and monitors that listen to the hooks.

- ``observer.event_order``: in a short run with the observer, a :class:`HookRecorder` sees the
  events in the order the hook contract promises (``train_start``, ``phase_enter``,
  ``pre_step``/``post_step`` pairs, ``eval_end`` and ``checkpoint`` at their cadences, the final
  evaluation and checkpoint, ``train_end``), and the run completes;
- ``observer.only_listens``: the run with the observer trains exactly as the run without it:
  the same losses and the same weights, optimizer state and random streams, bit for bit.
"""

from __future__ import annotations

from typing import Any

from phasetrain.testing.bits import differences
from phasetrain.testing.contract import contract
from phasetrain.testing.recorder import HookRecorder, expected_events

EVAL_EVERY = 2
CHECKPOINT_EVERY = 3


@contract("observer.event_order", "observer", examples=3)
def event_order(subject: Any, data: Any) -> None:
    """A hook recorder sees the protocol's order of events in a short run with the observer."""
    options = data.draw(subject.options(small=True), label="options")
    steps = subject.settings.steps
    recorder = HookRecorder()
    trainer = subject.trainer(
        options, hooks=[recorder], run={"eval_every": EVAL_EVERY, "checkpoint_every": CHECKPOINT_EVERY}
    )
    outcome = subject.fit(trainer, options)
    if outcome.status != "completed":
        subject.fail(f"with options {options!r} the run ended {outcome.status!r}: {outcome.error}")
    want = expected_events(steps, eval_every=EVAL_EVERY, checkpoint_every=CHECKPOINT_EVERY,
                           phases=[(trainer.state.phase, 0)])
    got = recorder.events
    if got != want:
        index = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        subject.fail(f"with options {options!r} event {index} was "
                     f"{got[index] if index < len(got) else 'missing'}, the protocol says "
                     f"{want[index] if index < len(want) else 'nothing more'} (events: {got})")


@contract("observer.only_listens", "observer", examples=2)
def only_listens(subject: Any, data: Any) -> None:
    """Training with the observer is bit for bit training without it."""
    from phasetrain.loop import Trainer

    options = data.draw(subject.options(small=True), label="options")
    heard, alone = HookRecorder(), HookRecorder()
    raw = subject.raw(options, out_dir=subject.run_dir())
    raw["observers"][subject.name] = {**raw["observers"][subject.name], "enabled": False}
    states = []
    for build in (lambda: subject.trainer(options, hooks=[heard]),
                  lambda: Trainer(subject.config(raw), registry=subject.registry, plugins=[alone])):
        trainer = build()  # built just before it trains: building seeds the random streams
        subject.fit(trainer, options)
        state = trainer.state_dict()
        state["plugins"] = {}  # what the observer keeps for itself is its own business
        states.append(state)
    diff = differences(heard.losses, alone.losses, "losses")
    diff += differences(states[0], states[1], volatile=subject.settings.volatile)
    if diff:
        subject.fail(f"with options {options!r} training differs from a run without the observer:\n  "
                     + "\n  ".join(diff))
