"""The probe: a forward-only loss that hybrid schedules use to judge predicted weights.

It scores the model on batches with negative indices (``task.batch(-1)``, ``batch(-2)``, ...),
which training never asks for, in eval mode (dropout draws no random numbers, batch norm keeps
its statistics), so probing changes nothing a later step sees. Under torch.distributed each
process scores its share and one scalar is averaged.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class ForwardLoss(Protocol):
    """A task whose loss needs autograd for something other than the parameters (input
    derivatives, say) offers it without parameter gradients; probes then use it."""

    def forward_loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor: ...


def _tensors(batch: Any) -> list[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, (tuple, list)):
        return [t for item in batch for t in _tensors(item)]
    if isinstance(batch, dict):
        return [t for item in batch.values() for t in _tensors(item)]
    return []


def probe_batches(trainer: Any, count: int) -> list[Any]:
    """Batches ``-1 .. -count`` of the task, this process's share of each. A batch made of the
    very tensors of an earlier one (a full-batch task, such as a PINN) is left out: it would
    only be scored twice."""
    task, strategy = trainer.task, trainer.strategy
    raw, seen = [], set()  # raw keeps the batches alive, so their ids stay theirs
    for i in range(count):
        batch = task.batch(-1 - i)
        key = tuple(id(t) for t in _tensors(batch))
        if not (key and key in seen):
            seen.add(key)
            raw.append(batch)
    return [strategy.shard(batch) for batch in raw]


def probe_loss(trainer: Any, batches: list[Any]) -> float:
    """The mean loss of ``batches`` at the current weights (see the module docstring)."""
    task, model, strategy = trainer.task, trainer.model, trainer.strategy
    was_training = model.training
    model.eval()
    try:
        total = torch.zeros((), dtype=torch.float64)
        with trainer.precision.autocast():
            for batch in batches:
                if isinstance(task, ForwardLoss):  # e.g. PINNs: input derivatives need autograd
                    loss = task.forward_loss(model, batch)
                else:
                    with torch.no_grad():
                        loss = task.loss(model, batch)
                total = total + loss.detach().double().cpu()
    finally:
        model.train(was_training)
    loss = total / max(1, len(batches))
    if strategy.size > 1:
        loss = strategy.mean(loss.to(trainer.device))
    return float(loss)
