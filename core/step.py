"""The kernel's real step, as a ``trylast`` implementation of ``run_step``.

It is registered like any plugin, so a plugin that handles a phase differently answers
``run_step`` first and this one never runs for that phase. The loop hands it the step's
micro-batches; it hands a closure to the precision policy, which runs it through the optimizer.
The closure is re-entrant: closure-based optimizers such as L-BFGS may call it several times,
always on the same micro-batches.

Inside the closure, after backward of every micro-batch: the policy unscales the gradients (if
it scales them), the loss and gradients are checked to be finite, and ``after_backward`` fires.
A non-finite loss or gradient raises before the optimizer touches anything, so it is never
applied; for closure optimizers, which may have moved the weights inside a line search, the
weights and optimizer state are put back. The step then reports ``nonfinite = 1``; what happens
next is the ``[nonfinite]`` plugin's policy.
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


class NonFiniteStep(Exception):
    """Raised inside the closure to abandon a step whose loss or gradients are not finite."""

    def __init__(self, loss: torch.Tensor):
        self.loss = loss
        super().__init__("non-finite loss or gradient")


_FLAGS: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
_NULL = contextlib.nullcontext()


def finite(loss: torch.Tensor, params: list[torch.Tensor], check_grads: bool) -> bool:
    """True when ``loss`` (and, if asked, every gradient) is finite.

    Uses the fused check that torch's GradScaler uses (one kernel per device and dtype, scale 1,
    which leaves the values bit for bit as they were): a per-step guard has to be cheap.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in [loss, *(p.grad for p in params if p.grad is not None)] if check_grads else [loss]:
        groups.setdefault((t.device, t.dtype), []).append(t)
    for (device, _dtype), group in groups.items():
        found, one = _FLAGS.get(device) or _FLAGS.setdefault(device, (torch.zeros(1, device=device), torch.ones(1, device=device)))
        found.zero_()
        torch._amp_foreach_non_finite_check_and_unscale_(group, found, one)
        if found.item():
            return False
    return True


@hookimpl(trylast=True)
def run_step(trainer: Trainer, step: int, phase: Phase, batches: Sequence[Any]) -> dict[str, Any]:
    task, model, precision, strategy = trainer.task, trainer.train_model, trainer.precision, trainer.strategy
    optimizer, params, hooks = trainer.optimizer, trainer.trainable, trainer.hooks
    accum, last = len(batches), len(batches) - 1
    unscale = precision.unscale if trainer.unscales else None

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
        if unscale is not None and finite(total, params, False):  # a non-finite loss leaves the scaler alone
            unscale(optimizer)
        if not finite(total, params, not precision.handles_overflow):
            raise NonFiniteStep(total)
        hooks.after_backward(trainer=trainer, step=step, optimizer=optimizer, micro_batches=accum)
        return total

    needs_closure = getattr(optimizer, "requires_closure", False)
    if needs_closure:  # a line search may move the weights before a bad evaluation
        saved = ([p.detach().clone() for p in params], copy.deepcopy(optimizer.state_dict()))
    try:
        loss = precision.step(optimizer, closure)
        metrics = {"loss": loss, "lr": optimizer.param_groups[0]["lr"]}
    except NonFiniteStep as bad:
        metrics = {"loss": bad.loss, "lr": optimizer.param_groups[0]["lr"], "nonfinite": 1}
        optimizer.zero_grad(set_to_none=True)
        if needs_closure:
            with torch.no_grad():
                torch._foreach_copy_(params, saved[0])
            optimizer.load_state_dict(saved[1])
    if strategy.size > 1:  # report the global batch's loss, not this process's part
        metrics["loss"] = strategy.mean(metrics["loss"])
    return metrics


def as_numbers(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics with 0-dim tensors turned into Python numbers (for summaries and files)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        out[key] = value
    return out
