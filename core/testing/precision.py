"""Contracts of precision policies (``precision.*``), checked in short real runs.

- ``precision.finite_losses``: every step's loss is finite;
- ``precision.dtypes_preserved``: parameters keep the dtype they had after ``prepare`` (the
  policy's ``dtype`` where it declares one) through every step;
- ``precision.state_round_trip``: the policy's own state (the loss scaler's, for ``fp16``),
  saved the way checkpoints save it and loaded into a fresh policy, comes back bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

from phasetrain.testing.contract import contract
from phasetrain.testing.bits import differences, through_checkpoint
from phasetrain.testing.recorder import HookRecorder


@contract("precision.finite_losses", "precision", examples=3)
def finite_losses(subject: Any, data: Any) -> None:
    """Every step of a short run reports a finite loss."""
    options = data.draw(subject.options(small=True), label="options")
    recorder = HookRecorder()
    subject.fit(subject.trainer(options, hooks=[recorder]), options)
    bad = [(step, loss) for step, loss in enumerate(recorder.losses) if not math.isfinite(loss)]
    if bad:
        subject.fail(f"with options {options!r} the loss of step {bad[0][0]} was {bad[0][1]!r} "
                     f"({len(bad)} of {len(recorder.losses)} steps not finite)")


@contract("precision.dtypes_preserved", "precision", examples=3)
def dtypes_preserved(subject: Any, data: Any) -> None:
    """Parameter dtypes after the run are those after prepare (and the policy's declared dtype)."""
    options = data.draw(subject.options(small=True), label="options")
    trainer = subject.trainer(options)
    before = {name: p.dtype for name, p in trainer.model.named_parameters()}
    declared = getattr(trainer.precision, "dtype", None)
    if declared is not None:
        other = {n: d for n, d in before.items() if d != declared and trainer.model.get_parameter(n).requires_grad}
        if other:
            name, dtype = next(iter(other.items()))
            subject.fail(f"declares dtype {declared}, but after prepare parameter {name!r} is {dtype}")
    subject.fit(trainer, options)
    after = {name: p.dtype for name, p in trainer.model.named_parameters()}
    changed = {n: (before[n], after.get(n)) for n in before if before[n] != after.get(n)}
    if changed:
        name, (was, now) = next(iter(changed.items()))
        subject.fail(f"with options {options!r} parameter {name!r} went from {was} to {now} during training")


def _has_state(subject: Any) -> str | None:
    obj = subject.built(subject.context_trainer())
    if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
        return f"{type(obj).__name__} keeps no state of its own (no state_dict/load_state_dict)"
    return None


@contract("precision.state_round_trip", "precision", examples=3, applies=_has_state)
def state_round_trip(subject: Any, data: Any) -> None:
    """The policy's state after some steps survives a checkpoint-style round trip into a fresh one."""
    options = data.draw(subject.options(small=True), label="options")
    trainer = subject.trainer(options)
    subject.fit(trainer, options)
    saved = trainer.precision.state_dict()
    fresh = subject.trainer(options).precision
    fresh.load_state_dict(through_checkpoint(saved))
    diff = differences(saved, fresh.state_dict(), "state_dict")
    if diff:
        subject.fail(f"with options {options!r} a fresh policy that loaded the state holds another "
                     "state:\n  " + "\n  ".join(diff))
