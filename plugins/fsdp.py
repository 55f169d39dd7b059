"""Fully sharded data parallel training: the ``fsdp`` strategy (FSDP2, ``fully_shard``).

Each of N processes holds 1/N of every parameter, of its gradient and of the optimizer state:
after wrapping, the model's parameters are DTensors sharded along dim 0 on a one-dimensional
device mesh. An FSDP *unit* gathers its parameters just before its forward (and again for its
backward) and frees them afterwards; gradients are reduce-scattered so that each process keeps
the gradient of its own shard. Everything else is as under ``ddp``: batch ``i`` is the global
batch and each process trains on its 1/N slice; rank 0 logs; optimizers, learning-rate
schedules, accumulation, clipping and weight averaging work unchanged, on the shards.

- **Initialisation**: processes are seeded apart (``seed + rank``), so before sharding every
  process takes rank 0's initial weights (one broadcast, as DistributedDataParallel does).
- **Units**: every module whose class is listed in ``wrap`` (``"Block"`` or a qualified
  ``"pkg.mod.Block"``) and, with ``wrap_depth = d``, every module at depth 1..d (the model's
  children are at depth 1; ``ModuleList`` and ``ModuleDict`` containers are looked through)
  becomes a unit of its own; modules without parameters never do. The model itself is always
  the outermost unit and holds whatever no inner unit took. Finer units lower the peak memory
  of the gathered parameters; each costs one all-gather per forward and per backward.
- **Mixed precision** comes from ``[precision]``: with ``mixed_precision = "auto"`` a policy that
  computes in a lower dtype (``bf16``) makes units gather their parameters in that dtype and
  reduce gradients in float32 (``MixedPrecisionPolicy``); master weights and optimizer state stay
  float32. ``fp16`` is refused: loss scaling would decide for each shard alone whether to skip a
  step.
- **offload_params** keeps the sharded parameters, their gradients and the optimizer step in host
  memory; units copy them to the GPU to compute (``CPUOffloadPolicy``). CUDA only.
- **Accumulation**: micro-batches before the last keep their gradients unsharded on each process
  (``set_requires_gradient_sync(False)``); the last one reduce-scatters the sum.
- **Checkpoints** hold DTensors: the run's ``[store]`` must write every process's shard
  (``[store] use = "sharded"``); this is checked before the first step.
- **L-BFGS** is refused: its line search works on whole flattened vectors, which no process has.

Without torchrun the strategy runs one process in a group of its own, through the same code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import attrs
import torch
import torch.distributed as dist

from phasetrain import Component, hookimpl
from phasetrain.config import in_range, non_negative, one_of
from phasetrain.errors import BadInput
from phasetrain.plugins import dtensor_ops
from phasetrain.plugins.distributed import ProcessGroup, WritesShards

CONTAINERS = (torch.nn.ModuleList, torch.nn.ModuleDict)  # no forward of their own: looked through


@runtime_checkable
class ComputesIn(Protocol):
    """A precision policy whose forward and backward compute in ``compute_dtype`` (bf16, fp16)."""

    compute_dtype: torch.dtype


@attrs.define
class FSDPOptions:
    backend: str = attrs.field(default="auto", validator=one_of("auto", "gloo", "nccl"))  # auto: by device
    timeout_s: float = attrs.field(default=300.0, validator=in_range(0.001, 1e9))  # a collective waits this long (s)
    wrap: list[str] = attrs.field(factory=list)  # module classes that become units of their own, e.g. ["Block"]
    wrap_depth: int = attrs.field(default=0, validator=non_negative)  # >0: also every module at depth 1..this
    reshard_after_forward: bool = True  # free gathered parameters after forward (gather again for backward)
    offload_params: bool = False  # sharded parameters, gradients and optimizer step in host memory (CUDA only)
    mixed_precision: str = attrs.field(default="auto", validator=one_of("auto", "off"))  # auto: from [precision]


def _names(module: torch.nn.Module) -> set[str]:
    cls = type(module)
    return {cls.__name__, f"{cls.__module__}.{cls.__qualname__}"}


def units(model: torch.nn.Module, classes: list[str], depth: int) -> list[torch.nn.Module]:
    """The modules that become FSDP units of their own, children before parents (the order
    ``fully_shard`` needs), the model itself excluded. A class name that matches no module of
    the model is a :class:`BadInput` naming ``strategy.wrap``."""
    present = set().union(*(_names(m) for m in model.modules()))
    if unknown := [c for c in classes if c not in present]:
        found = sorted({type(m).__name__ for m in model.modules()})
        raise BadInput(f"strategy.wrap: the model has no module of class {unknown[0]!r} (its classes: {', '.join(found)})")
    wanted, chosen, seen = set(classes), [], set()

    def visit(module: torch.nn.Module, level: int) -> None:
        for child in module.children():
            container = isinstance(child, CONTAINERS)
            child_level = level if container else level + 1
            visit(child, child_level)
            if (container or id(child) in seen or not any(True for _ in child.parameters())
                    or not (_names(child) & wanted or child_level <= depth)):
                continue
            seen.add(id(child))
            chosen.append(child)

    visit(model, 0)
    return chosen


def mixed_precision(precision: Any, mode: str) -> Any:
    """The ``MixedPrecisionPolicy`` that carries ``[precision]`` into the units."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if mode == "auto" and isinstance(precision, ComputesIn):
        return MixedPrecisionPolicy(param_dtype=precision.compute_dtype, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


class FSDP(ProcessGroup):
    """Parameters, gradients and optimizer state sharded across processes (see the module docstring)."""

    def __init__(self, options: FSDPOptions, ctx: Any):
        super().__init__(options, ctx)
        dtensor_ops.install()  # plain-tensor plugins (EMA, hybrid) then work on the shards
        self.ctx = ctx
        self.mesh: Any = None  # the DeviceMesh of the shards, made with the device
        self.units: list[str] = []  # names of the modules wrapped as units of their own

    def device(self, name: str) -> torch.device:
        from torch.distributed.device_mesh import init_device_mesh

        device = super().device(name)
        self.mesh = init_device_mesh(device.type, (self.size,))
        return device

    def _refuse(self, trainer: Any) -> None:
        """Configurations that cannot work sharded, before anything is sharded."""
        source, store = trainer.config.source, trainer.store
        if not (isinstance(store, WritesShards) and store.writes_shards):
            name = trainer.config.section("store").use
            raise BadInput(f'{source}: store: strategy "fsdp" holds a shard of the model in every process, which '
                           f"the store {name!r} cannot write; choose one that writes shards: [store] use = "
                           "\"sharded\" (--set store.use='sharded')")
        if trainer.precision.handles_overflow:
            raise BadInput(f'{source}: precision: "{trainer.config.section("precision").use}" under strategy "fsdp": '
                           "loss scaling would decide for each shard alone whether to skip a step; "
                           'use precision "bf16"')
        if self.options.offload_params and self._device.type != "cuda":
            raise BadInput(f"{source}: strategy.offload_params: needs a CUDA device; this run's device is "
                           f"{self._device}")

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

        trainer, o = self.ctx.trainer, self.options
        self._refuse(trainer)
        kwargs = {"mesh": self.mesh, "reshard_after_forward": o.reshard_after_forward,
                  "mp_policy": mixed_precision(trainer.precision, o.mixed_precision),
                  "offload_policy": CPUOffloadPolicy() if o.offload_params else OffloadPolicy()}
        if self.size > 1:  # processes were seeded apart: all start from rank 0's weights, as under ddp
            with torch.no_grad():
                for tensor in [*model.parameters(), *model.buffers()]:
                    dist.broadcast(tensor.detach(), src=0)
        names = {id(m): n for n, m in model.named_modules()}
        try:
            chosen = units(model, o.wrap, o.wrap_depth)
        except BadInput as exc:
            raise BadInput(f"{trainer.config.source}: {exc}") from None
        for module in chosen:
            fully_shard(module, **kwargs)
            self.units.append(names[id(module)])
        return fully_shard(model, **kwargs)

    @contextlib.contextmanager
    def no_sync(self, module: Any) -> Iterator[None]:
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)

    @hookimpl(tryfirst=True)
    def train_start(self, trainer: Any) -> None:
        for key, optimizer in trainer.optimizers.items():
            if getattr(optimizer, "requires_closure", False):
                raise BadInput(f"{trainer.config.source}: optimizer {key!r} needs a closure (L-BFGS): its line "
                               'search works on whole flattened vectors, which no process holds under strategy '
                               '"fsdp"; use "ddp"')


@hookimpl
def phasetrain_components() -> list[Component]:
    return [Component("strategy", "fsdp", FSDP, FSDPOptions,
                      "FSDP2: parameters, gradients and optimizer state sharded across torchrun's processes")]
