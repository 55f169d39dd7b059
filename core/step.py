"""The kernel's real training step, as a ``trylast`` implementation of ``run_step``.

It is registered like any plugin, so a plugin that handles a phase differently answers
``run_step`` first and this one never runs for that phase.

A step fetches ``run.grad_accum_steps`` micro-batches (the data position advances by that many),
then hands a closure to the precision policy, which runs it through the optimizer. The closure
is re-entrant: closure-based optimizers such as L-BFGS may call it several times, always on the
same micro-batches.

Non-finite guard: after backward, the closure checks that the loss and the gradient norm are
finite (the gradients are left to the policy when it ``handles_overflow``, as fp16 loss scaling
does). If not, it raises before the optimizer touches anything, so a NaN or inf is never
applied; for closure optimizers, which may have moved the weights inside a line search, the
weights and optimizer state are put back. The step then reports ``nonfinite = 1``; the
:class:`phasetrain.guard.NonFiniteGuard` decides what happens next.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from phasetrain.distributed import mean_tensor_across_ranks, shard
from phasetrain.hookspecs import hookimpl

if TYPE_CHECKING:
    from phasetrain.loop import Phase, Trainer


class NonFiniteStep(Exception):
    """Raised inside the closure to abandon a step whose loss or gradients are not finite."""

    def __init__(self, loss: torch.Tensor):
        self.loss = loss
        super().__init__("non-finite loss or gradient")


_FLAGS: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _finite(loss: torch.Tensor, params: list[torch.Tensor], check_grads: bool) -> bool:
    """True when ``loss`` (and, if asked, every gradient) is finite.

    Uses the fused check that torch's GradScaler uses (one kernel per device and dtype, scale 1,
    which leaves the values bit for bit as they were): a per-step guard has to be cheap.
    """
    tensors = [loss]
    if check_grads:
        tensors += [p.grad for p in params if p.grad is not None]
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    for (device, _dtype), group in groups.items():
        if device not in _FLAGS:
            _FLAGS[device] = (torch.zeros(1, device=device), torch.ones(1, device=device))
        found, one = _FLAGS[device]
        found.zero_()
        torch._amp_foreach_non_finite_check_and_unscale_(group, found, one)
        if found.item():
            return False
    return True


@hookimpl(trylast=True)
def run_step(trainer: Trainer, step: int, phase: Phase) -> dict[str, Any]:
    task, model, precision = trainer.task, trainer.train_model, trainer.precision
    optimizer = trainer.optimizer
    accum = trainer.config.run.grad_accum_steps
    first = trainer.state.batches
    batches = [task.batch(first + i) for i in range(accum)]
    world = trainer.world
    if world.active:  # every rank made the same global batch; each trains on its slice
        batches = [shard(b, world) for b in batches]
    trainer.state.batches = first + accum
    params = trainer.trainable
    check_grads = not getattr(precision, "handles_overflow", False)

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        total = None
        for i, batch in enumerate(batches):
            # DDP all-reduces in backward; with accumulation only the last micro-batch's does
            sync = world.active and accum > 1 and i < accum - 1
            with model.no_sync() if sync else contextlib.nullcontext():
                with precision.autocast():
                    loss = task.loss(model, batch)
                if accum > 1:
                    loss = loss / accum
                precision.backward(loss)
            total = loss.detach() if total is None else total + loss.detach()
        if not _finite(total, params, check_grads):
            raise NonFiniteStep(total)
        return total

    needs_closure = getattr(optimizer, "requires_closure", False)
    if needs_closure:  # a line search may move the weights before a bad evaluation
        saved = ([p.detach().clone() for p in params], copy.deepcopy(optimizer.state_dict()))
    try:
        loss = precision.step(optimizer, closure)
        nonfinite = 0
    except NonFiniteStep as bad:
        loss, nonfinite = bad.loss, 1
        optimizer.zero_grad(set_to_none=True)
        if needs_closure:
            with torch.no_grad():
                for p, value in zip(params, saved[0], strict=True):
                    p.copy_(value)
            optimizer.load_state_dict(saved[1])
    if world.active:  # report the global batch's loss, not this rank's slice
        loss = mean_tensor_across_ranks(loss)
    scheduler = trainer.lr_scheduler
    if scheduler is not None:
        scheduler.step()
    metrics = {"loss": loss, "lr": optimizer.param_groups[0]["lr"]}
    if nonfinite:
        metrics["nonfinite"] = 1
    return metrics


def as_numbers(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics with 0-dim tensors turned into Python numbers (for summaries and files)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        out[key] = value
    return out
