"""The kernel's real step, as a ``trylast`` implementation of ``run_step``.

It is registered like any plugin, so a plugin that handles a phase differently answers
``run_step`` first and this one never runs for that phase. The loop hands it the step's
micro-batches; it hands a closure to the precision policy, which runs it through the optimizer.
The closure is re-entrant: closure-based optimizers such as L-BFGS may call it several times,
always on the same micro-batches.

Inside the closure, after backward of every micro-batch, the policy unscales the gradients (if it
scales them) and ``after_backward`` fires. A plugin that finds the loss or the gradients unusable
(the ``[nonfinite]`` policies check that they are finite) calls ``trainer.request_skip_step()``:
the closure then raises before the optimizer touches anything, so nothing is applied; for closure
optimizers, which may have moved the weights inside a line search, the weights and optimizer
state are put back. The step reports ``skipped = 1``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from phasetrain.hookspecs import hookimpl

if TYPE_CHECKING:
    from phasetrain.loop import Trainer
    from phasetrain.types import Phase

_NULL = contextlib.nullcontext()


class SkipStep(Exception):
    """Raised inside the closure to abandon a step that a plugin asked to skip."""

    def __init__(self, loss: torch.Tensor):
        self.loss = loss
        super().__init__("the step was skipped")


def _parts(trainer: Trainer, phase: Phase) -> tuple[Any, ...]:
    """What the step uses, looked up once per phase (and per wrapped model): it runs every step."""
    cached = trainer.__dict__.get("_step_parts")
    if cached is None or cached[0] is not phase or cached[1] is not trainer.train_model:
        precision, optimizer = trainer.precision, trainer.optimizer
        cached = trainer.__dict__["_step_parts"] = (
            phase, trainer.train_model, trainer.task, precision, trainer.strategy, optimizer, trainer.trainable,
            trainer.hooks, precision.unscale if trainer.unscales else None, getattr(optimizer, "requires_closure", False))
    return cached


@hookimpl(trylast=True)
def run_step(trainer: Trainer, step: int, phase: Phase, batches: Sequence[Any]) -> dict[str, Any]:
    _phase, model, task, precision, strategy, optimizer, params, hooks, unscale, needs_closure = _parts(trainer, phase)
    accum, last = len(batches), len(batches) - 1

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        total = None
        for i, batch in enumerate(batches):
            with strategy.no_sync(model) if i < last else _NULL:  # earlier micro-batches: nothing exchanged yet
                with precision.autocast():
                    loss = task.loss(model, batch)
                loss = loss / accum if accum > 1 else loss
                precision.backward(loss)
            total = loss.detach() if total is None else total + loss.detach()
        if unscale is not None:
            unscale(optimizer)
        hooks.after_backward(trainer=trainer, step=step, optimizer=optimizer, micro_batches=accum, loss=total)
        if trainer.skip_requested:
            raise SkipStep(total)
        return total

    if needs_closure:  # a line search may move the weights before a step is abandoned
        saved = ([p.detach().clone() for p in params], copy.deepcopy(optimizer.state_dict()))
    try:
        metrics = {"loss": precision.step(optimizer, closure), "lr": optimizer.param_groups[0]["lr"]}
    except SkipStep as skipped:
        metrics = {"loss": skipped.loss, "lr": optimizer.param_groups[0]["lr"], "skipped": 1}
        optimizer.zero_grad(set_to_none=True)
        if needs_closure:
            with torch.no_grad():
                torch._foreach_copy_(params, saved[0])
            optimizer.load_state_dict(saved[1])
    finally:
        trainer.skip_requested = False
    if strategy.size > 1:  # report the global batch's loss, not this process's part
        metrics["loss"] = strategy.mean(metrics["loss"])
    return metrics


def as_numbers(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics with 0-dim tensors turned into Python numbers (for summaries and files)."""
    return {k: v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v for k, v in metrics.items()}
