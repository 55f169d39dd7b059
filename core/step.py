"""The kernel's real training step, as a ``trylast`` implementation of ``run_step``.

It is registered like any plugin, so a plugin that handles a phase differently answers
``run_step`` first and this one never runs for that phase.

A step fetches ``run.grad_accum_steps`` micro-batches (the data position advances by that many),
then hands a closure to the precision policy, which runs it through the optimizer. The closure
is re-entrant: closure-based optimizers such as L-BFGS may call it several times, always on the
same micro-batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from phasetrain.hookspecs import hookimpl

if TYPE_CHECKING:
    from phasetrain.loop import Phase, Trainer


@hookimpl(trylast=True)
def run_step(trainer: Trainer, step: int, phase: Phase) -> dict[str, Any]:
    task, model, precision = trainer.task, trainer.model, trainer.precision
    optimizer = trainer.optimizer
    accum = trainer.config.run.grad_accum_steps
    first = trainer.state.batches
    batches = [task.batch(first + i) for i in range(accum)]
    trainer.state.batches = first + accum

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        total = None
        for batch in batches:
            with precision.autocast():
                loss = task.loss(model, batch)
            if accum > 1:
                loss = loss / accum
            precision.backward(loss)
            total = loss.detach() if total is None else total + loss.detach()
        return total

    loss = precision.step(optimizer, closure)
    scheduler = trainer.lr_scheduler
    if scheduler is not None:
        scheduler.step()
    return {"loss": loss, "lr": optimizer.param_groups[0]["lr"]}


def as_numbers(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics with 0-dim tensors turned into Python numbers (for summaries and files)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        out[key] = value
    return out
