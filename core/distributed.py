"""Data-parallel training on torch.distributed, set up from the torchrun environment.

``torchrun --nproc_per_node=N -m phasetrain run CONFIG`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and a rendezvous in the environment. :func:`setup` joins the
process group (backend from ``run.distributed.backend``: ``auto`` is nccl on CUDA, gloo on the
CPU) and every rank then builds the same Trainer:

- the model is wrapped in DistributedDataParallel for the real step, which all-reduces the
  gradients; ``trainer.model`` stays the plain module (checkpoints, evaluation, predictions);
- a task's batch ``i`` is the *global* batch, identical on every rank (it is a function of the
  seed and ``i``); each rank trains on its 1/N slice along the first dimension (:func:`shard`);
- python, numpy and torch RNGs are seeded with ``seed + rank`` (dropout differs per rank) and
  checkpointed per rank;
- rank 0 alone builds observers (logs, progress, TensorBoard) and writes checkpoints; the others
  wait at a barrier and all ranks load the same checkpoint on resume.

A failing rank exits non-zero with its message; torchrun then stops the others, and the process
group's timeout (``run.distributed.timeout_s``) bounds any collective that waits on a dead rank.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from typing import Any

import attrs
import torch
import torch.distributed as dist

from phasetrain.hookspecs import hookimpl


@attrs.frozen
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


SINGLE = World()


def launched() -> bool:
    """True when started by torchrun (or anything that sets the same environment)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return SINGLE


def setup(backend: str, timeout_s: float, device: str) -> World:
    """Join the process group described by the environment (no-op for a single process)."""
    if not launched():
        return SINGLE
    if not dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if backend == "auto":
            backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return current()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if current().active:
        dist.barrier()


def shard(batch: Any, world: World) -> Any:
    """This rank's slice of a global batch: tensors are split along dim 0 into ``world.size``
    parts (containers are walked; other values are left as they are)."""
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 0:
            return batch
        return torch.tensor_split(batch, world.size)[world.rank]
    if isinstance(batch, Mapping):
        return type(batch)({k: shard(v, world) for k, v in batch.items()})
    if isinstance(batch, tuple):
        return tuple(shard(v, world) for v in batch)
    if isinstance(batch, list):
        return [shard(v, world) for v in batch]
    return batch


def mean_across_ranks(value: float, device: torch.device) -> float:
    """The mean of a number over all ranks (one all-reduce of one scalar)."""
    world = current()
    if not world.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / world.size


def mean_tensor_across_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a 0-dim tensor over all ranks (a new tensor; ``value`` is left alone)."""
    out = value.detach().clone()
    dist.all_reduce(out)
    return out / current().size


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank (one all-reduce of one number)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (all ranks get the list)."""
    world = current()
    if not world.active:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def same_on_all_ranks(tensors: list[torch.Tensor]) -> bool:
    """Whether ``tensors`` are bitwise equal on every rank (a checksum is compared)."""
    world = current()
    if not world.active:
        return True
    with torch.no_grad():
        flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
        weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
        checksum = torch.stack([flat.sum(), (flat * weights).sum()])
    gathered = [torch.empty_like(checksum) for _ in range(world.size)]
    dist.all_gather(gathered, checksum)
    return all(torch.equal(g, gathered[0]) for g in gathered)


class ConsistencyCheck:
    """Debug mode (``run.distributed.check_every``): every N steps, verify that the weights are
    bitwise the same on every rank, so that predicted steps (applied on each rank without any
    communication) cannot drift apart unnoticed."""

    def __init__(self, every: int):
        self.every = every
        self.checks = 0

    @hookimpl(trylast=True)
    def post_step(self, trainer: Any, step: int) -> None:
        if (step + 1) % self.every:
            return
        self.checks += 1
        if not same_on_all_ranks(trainer.trainable):
            from phasetrain.errors import TrainingFailed

            raise TrainingFailed(f"rank {current().rank}: weights differ between ranks after step {step + 1}")
