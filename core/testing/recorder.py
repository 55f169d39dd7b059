"""A hook recorder: a plugin that writes down every event of a run, and the order the hook
contract (``phasetrain.hookspecs``) promises for a run of a given shape.

    recorder = HookRecorder()
    trainer = phasetrain.Trainer.from_config("regression", [...], plugins=[recorder])
    trainer.fit()
    assert recorder.names() == expected_names(steps=4, eval_every=2, checkpoint_every=3)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from phasetrain import hookimpl

Event = tuple[Any, ...]


class HookRecorder:
    """Records ``(hook, details...)`` for every run hook, and each step's loss.

    Events: ``("train_start", step)``, ``("phase_enter", phase, previous)``, ``("pre_step",
    step)``, ``("after_backward", step, micro_batches)``, ``("post_step", step)``,
    ``("eval_start", step)``, ``("eval_end", step)``, ``("checkpoint", step)``, ``("save_start",
    step)``, ``("save_end", step)``, ``("restore", step)``, ``("train_error", step)``,
    ``("train_end", status, steps)``. Observers are ``trylast`` on ``post_step``, so the
    recorder is too: it sees the metrics the way loggers do.
    """

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.losses: list[float] = []  # metrics["loss"] of every step, as floats
        self.metrics: list[dict[str, Any]] = []  # every step's metrics, as they reached the loggers

    def names(self) -> list[str]:
        return [e[0] for e in self.events]

    def of(self, hook: str) -> list[Event]:
        return [e for e in self.events if e[0] == hook]

    @hookimpl
    def train_start(self, trainer: Any) -> None:
        self.events.append(("train_start", trainer.state.step))

    @hookimpl
    def phase_enter(self, phase: Any, previous: Any) -> None:
        self.events.append(("phase_enter", phase.name, previous.name if previous is not None else None))

    @hookimpl
    def pre_step(self, step: int) -> None:
        self.events.append(("pre_step", step))

    @hookimpl
    def after_backward(self, step: int, micro_batches: int) -> None:
        self.events.append(("after_backward", step, micro_batches))

    @hookimpl(trylast=True)
    def post_step(self, step: int, metrics: Any) -> None:
        self.events.append(("post_step", step))
        loss = metrics.get("loss") if hasattr(metrics, "get") else None
        self.losses.append(float(loss) if loss is not None else math.nan)
        self.metrics.append(dict(metrics))

    @hookimpl
    def eval_start(self, step: int) -> None:
        self.events.append(("eval_start", step))

    @hookimpl(trylast=True)
    def eval_end(self, step: int) -> None:
        self.events.append(("eval_end", step))

    @hookimpl
    def checkpoint(self, trainer: Any) -> None:
        self.events.append(("checkpoint", trainer.state.step))

    @hookimpl
    def save_start(self, step: int) -> None:
        self.events.append(("save_start", step))

    @hookimpl
    def save_end(self, step: int) -> None:
        self.events.append(("save_end", step))

    @hookimpl
    def train_error(self, step: int) -> None:
        self.events.append(("train_error", step))

    @hookimpl
    def restore(self, trainer: Any) -> None:
        self.events.append(("restore", trainer.state.step))

    @hookimpl
    def train_end(self, outcome: Any) -> None:
        self.events.append(("train_end", outcome.status, outcome.steps))


def expected_events(
    steps: int,
    *,
    eval_every: int = 0,
    checkpoint_every: int = 0,
    phases: Sequence[tuple[str, int]] = (("train", 0),),
    start: int = 0,
    micro_batches: int = 1,
) -> list[Event]:
    """The events of an uninterrupted ``fit()`` from step ``start`` to ``steps``, per the hook
    contract: ``phases`` lists ``(name, first step)`` of every phase in order; every step is a
    real step of an optimizer that evaluates its closure once."""
    events: list[Event] = [("train_start", start)]
    begins = dict((first, name) for name, first in phases)
    current = None
    for name, first in phases:
        if first <= start:
            current = name
    last_eval = last_save = None
    entered = None
    for step in range(start, steps):
        name = begins.get(step, current) if step > start else current
        if name != entered:
            events.append(("phase_enter", name, entered))
            entered = current = name
        events += [("pre_step", step), ("after_backward", step, micro_batches), ("post_step", step)]
        done = step + 1
        if eval_every and done % eval_every == 0:
            events += [("eval_start", done), ("eval_end", done)]
            last_eval = done
        if checkpoint_every and done % checkpoint_every == 0:
            events += [("checkpoint", done), ("save_start", done), ("save_end", done)]
            last_save = done
    if last_eval != steps:
        events += [("eval_start", steps), ("eval_end", steps)]
    if last_save != steps:
        events += [("checkpoint", steps), ("save_start", steps), ("save_end", steps)]
    events.append(("train_end", "completed", steps))
    return events


def expected_names(steps: int, **shape: Any) -> list[str]:
    return [e[0] for e in expected_events(steps, **shape)]
