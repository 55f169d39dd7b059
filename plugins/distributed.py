"""Data-parallel training on torch.distributed: the ``ddp`` and ``auto`` strategies.

``torchrun --nproc_per_node=N -m phasetrain run CONFIG`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and a rendezvous in the environment. ``auto`` (the default
strategy) is ``ddp`` when launched that way and the kernel's single process otherwise. ``ddp``
joins the process group (backend ``auto``: nccl on CUDA, gloo on the CPU) and then:

- the model is wrapped in DistributedDataParallel for the real step, which all-reduces the
  gradients; ``trainer.model`` stays the plain module (checkpoints, evaluation, predicted steps);
- a task's batch ``i`` is the *global* batch, identical on every rank (a function of the seed and
  ``i``); each rank trains on its 1/N slice along the first dimension (:meth:`DDP.shard`);
- python, numpy and torch RNGs are seeded with ``seed + rank`` and checkpointed per rank;
- observers are built on rank 0 alone; rank 0 writes checkpoints while the others wait.

A failing rank exits non-zero with its message; torchrun then stops the others, and the process
group's timeout (``timeout_s``) bounds any collective that waits on a dead rank. Under
``torchrun --max-restarts=N`` torchrun then starts the group again, and ``phasetrain run``
resumes it from the newest good checkpoint by itself (:func:`restarted`).

The ``fsdp`` strategy (``phasetrain.plugins.fsdp``) shares :class:`ProcessGroup` (joining the
group, the batch split, the agreements) with ``ddp``; what a sharding strategy and a store need
to know of each other are the two small protocols here, :class:`ShardsState` and
:class:`WritesShards`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import attrs
import torch
import torch.distributed as dist

from phasetrain import Component, hookimpl
from phasetrain.config import in_range, non_negative, one_of
from phasetrain.errors import CheckpointError, TrainingFailed
from phasetrain.strategy import SingleProcess, resolve_device


@runtime_checkable
class ShardsState(Protocol):
    """A strategy that splits parameters, gradients and optimizer state across its processes:
    they are DTensors on ``mesh`` (a ``DeviceMesh``), each process holding its shard."""

    mesh: Any


@runtime_checkable
class WritesShards(Protocol):
    """A store that writes every process's shard of a sharded state (``writes_shards`` is True)
    and reads it back on any number of processes."""

    writes_shards: bool


@attrs.define
class DDPOptions:
    backend: str = attrs.field(default="auto", validator=one_of("auto", "gloo", "nccl"))  # auto: by device
    timeout_s: float = attrs.field(default=300.0, validator=in_range(0.001, 1e9))  # a collective waits this long (s)
    check_every: int = attrs.field(default=0, validator=non_negative)  # >0: verify weights agree every N steps


def is_dtensor(value: Any) -> bool:
    """Whether ``value`` is a DTensor (a shard of a tensor split across processes), without
    importing torch.distributed.tensor, which takes seconds, in runs that never use it."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(value, module.DTensor)


def launched() -> bool:
    """True when started by torchrun (or anything that sets the same environment)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def restarted() -> bool:
    """True in a process group that ``torchrun --max-restarts`` started again after a failure."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def resume_on_restart(trainer: Any) -> bool:
    """Whether ``phasetrain run`` should resume by itself: the group was restarted by torchrun
    and the run has a checkpoint (a group that failed before its first one starts again)."""
    if not restarted():
        return False
    try:
        trainer.store.latest(trainer.out_dir)
    except CheckpointError:
        return False
    return True


def join(backend: str, timeout_s: float, device: str) -> None:
    """Join the process group torchrun describes in the environment; without torchrun, a group
    of this process alone (so that a one-process run takes the same code path)."""
    if dist.is_initialized():
        return
    use_cuda = device != "cpu" and torch.cuda.is_available()
    backend = backend if backend != "auto" else ("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = datetime.timedelta(seconds=timeout_s)
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # torchrun's store outlives a restart and keeps the dead group's keys (its addresses):
        # each attempt gets keys of its own (pytorch/pytorch#135712)
        store = dist.PrefixStore(f"phasetrain/attempt-{env.get('TORCHELASTIC_RESTART_COUNT', '0')}/", dist.TCPStore(
            env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False, timeout=timeout))
        dist.init_process_group(backend=backend, timeout=timeout, store=store, rank=int(env["RANK"]),
                                world_size=int(env["WORLD_SIZE"]))
    elif "MASTER_ADDR" in env:
        dist.init_process_group(backend=backend, timeout=timeout)
    else:
        dist.init_process_group(backend=backend, timeout=timeout, store=dist.HashStore(), rank=0, world_size=1)


def shard(batch: Any, rank: int, size: int) -> Any:
    """Part ``rank`` of ``size`` of a global batch: tensors are split along dim 0 (containers
    are walked; other values are left as they are)."""
    if isinstance(batch, torch.Tensor):
        return batch if batch.dim() == 0 else torch.tensor_split(batch, size)[rank]
    if isinstance(batch, Mapping):
        return type(batch)({k: shard(v, rank, size) for k, v in batch.items()})
    if isinstance(batch, tuple):
        items = [shard(v, rank, size) for v in batch]
        return type(batch)(*items) if hasattr(batch, "_fields") else tuple(items)
    if isinstance(batch, list):
        return [shard(v, rank, size) for v in batch]
    return batch


class ProcessGroup:
    """What the strategies on torch.distributed share: joining the group, a global batch split
    along dim 0, and the agreements the loop needs. Subclasses wrap the model."""

    def __init__(self, options: Any, ctx: Any):
        self.options = options
        join(options.backend, options.timeout_s, ctx.config.run.device)
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self._device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, name: str) -> torch.device:
        self._device = resolve_device(name, self.local_rank, spread=True)
        return self._device

    def shard(self, batch: Any) -> Any:
        return shard(batch, self.rank, self.size)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        out = value.detach().clone()
        dist.all_reduce(out)
        return out / self.size

    def any(self, flag: bool) -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=self._device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        if not dist.is_initialized():
            return
        if sys.exc_info()[0] is None:
            # A clean end: leave together. A process that tears down its connections while a
            # peer still finishes its last collective can make gloo abort that peer at exit
            # ("terminate called without an active exception"). After an error, do not wait:
            # the failing process may never arrive.
            try:
                dist.barrier()
            except Exception:  # noqa: BLE001 - a peer already gone: nothing left to wait for
                pass
        dist.destroy_process_group()


class DDP(ProcessGroup):
    """One process per device, gradients all-reduced by DistributedDataParallel."""

    def __init__(self, options: DDPOptions, ctx: Any):
        super().__init__(options, ctx)
        self.checks = 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        ids = [self._device.index] if self._device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, module: torch.nn.Module) -> contextlib.AbstractContextManager:
        return module.no_sync()

    def same_on_all_ranks(self, tensors: list[torch.Tensor]) -> bool:
        """Whether ``tensors`` are bitwise equal on every rank (two checksums are compared)."""
        with torch.no_grad():
            flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
            weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
            checksum = torch.stack([flat.sum(), (flat * weights).sum()])
        gathered = [torch.empty_like(checksum) for _ in range(self.size)]
        dist.all_gather(gathered, checksum)
        return all(torch.equal(g, gathered[0]) for g in gathered)

    @hookimpl(trylast=True)
    def post_step(self, trainer: Any, step: int) -> None:
        # Debug mode: steps that exchange nothing (predicted updates) must not drift apart.
        every = self.options.check_every
        if not every or (step + 1) % every:
            return
        self.checks += 1
        if not self.same_on_all_ranks(trainer.trainable):
            raise TrainingFailed(f"rank {self.rank}: weights differ between ranks after step {step + 1}")


def auto(options: DDPOptions, ctx: Any) -> Any:
    """``ddp`` when launched by torchrun, one process otherwise."""
    return DDP(options, ctx) if launched() else SingleProcess()


@hookimpl
def phasetrain_components() -> list[Component]:
    return [
        Component("strategy", "ddp", DDP, DDPOptions, "DistributedDataParallel across torchrun's processes"),
        Component("strategy", "auto", auto, DDPOptions, "ddp under torchrun, one process otherwise", default=True),
    ]
