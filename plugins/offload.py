"""Built-in offload strategies: where optimizer state lives in each phase.

``none`` leaves optimizer state where the optimizer put it. ``cpu`` and ``cpu_pinned`` move the
state tensors of every optimizer of the run (``trainer.optimizers``) to host memory while the
schedule is in one of ``phases`` (by default ``predict``, whose predicted steps need no optimizer)
and move them back when a phase that is not listed begins:

- ``phase_enter`` into a listed phase: each state tensor is copied to host memory and the
  optimizer's state entry is replaced by the host copy; the device copy is freed.
- ``phase_enter`` into any other phase: each host tensor goes back to the device it came from
  (Adam's ``step`` counters, which torch keeps on the CPU, stay on the CPU).
- An optimizer that steps while its state is on the host (a listed phase that takes real steps)
  gets its state back just before that step, through a step pre-hook; correctness never depends
  on the phase list.

``cpu_pinned`` copies into pinned (page-locked) host memory with ``non_blocking=True`` and starts
the copy back *ahead of need*, on a side CUDA stream, at ``pre_step`` of the last step of the
offloaded phase (the schedule's ``steps_of(phase)`` tells how long the phase lasts) or whenever a
plugin calls :meth:`CPUOffload.prefetch` (a schedule that decides to leave Predict can). The next
phase then only waits on an event instead of copying. If the next phase is offloaded too, the
prefetched copy is dropped.

On a machine without CUDA both strategies still copy the state out and back (no memory is
saved), so the same code path runs and is tested everywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, Protocol, runtime_checkable

import attrs
import torch

from phasetrain import Component, NoOptions, hookimpl
from phasetrain.config import FieldValueError
from phasetrain.errors import BadInput
from phasetrain.registry import Kind
from phasetrain.types import KnowsPhaseLengths


@runtime_checkable
class KnowsStepsLeft(Protocol):
    """A schedule that decides phase lengths as it goes and can tell how many steps are left in
    the current phase, this one included (``None`` while it is open-ended)."""

    def phase_steps_left(self, trainer: Any) -> int | None: ...


class NoOffload:
    """Optimizer state stays where the optimizer put it."""

    def __init__(self, options: NoOptions, ctx: Any):
        pass


# ---------------------------------------------------------------------------------------------
# Moving nested optimizer state (dicts, lists and tuples of tensors and plain values)
# ---------------------------------------------------------------------------------------------


def tree_map(value: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``value`` with every tensor ``t`` inside dicts, lists and tuples replaced by ``fn(t)``."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {k: tree_map(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(tree_map(v, fn) for v in value)
    return value


def tree_map2(value: Any, other: Any, fn: Callable[[torch.Tensor, Any], Any]) -> Any:
    """Like :func:`tree_map`, pairing each tensor with the leaf at the same place in ``other``."""
    if isinstance(value, torch.Tensor):
        return fn(value, other)
    if isinstance(value, dict):
        return {k: tree_map2(v, other[k], fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(tree_map2(v, o, fn) for v, o in zip(value, other, strict=True))
    return value


def _tensors(value: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    tree_map(value, found.append)
    return found


def tensor_bytes(value: Any) -> int:
    """Bytes held by the tensors inside ``value``."""
    return sum(t.numel() * t.element_size() for t in _tensors(value))


@attrs.define
class Parked:
    """One optimizer whose state is on the host: for each parameter, the host state we installed
    and the devices its tensors came from (a tree of the same shape)."""

    optimizer: torch.optim.Optimizer
    entries: dict[Any, tuple[dict[str, Any], Any]]
    copied: Any = None  # CUDA event: the copies to the host are complete (None: synchronous)


@attrs.define
class OffloadStats:
    """What moved, for logs and benchmarks."""

    offloads: int = 0  # optimizers parked on the host
    restores: int = 0  # optimizers given their state back
    restores_on_step: int = 0  # of those, because the optimizer stepped in an offloaded phase
    prefetches: int = 0  # restores started ahead of need
    bytes_out: int = 0
    bytes_in: int = 0


# ---------------------------------------------------------------------------------------------
# The strategies
# ---------------------------------------------------------------------------------------------


def _phase_names(_instance: Any, attribute: Any, value: list[str]) -> None:
    if not value:
        raise FieldValueError(
            attribute.name, 'needs at least one phase name; use offload = "none" to keep the state on the device'
        )


@attrs.define
class OffloadOptions:
    # the phases during which optimizer state lives in host memory
    phases: list[str] = attrs.field(factory=lambda: ["predict"], validator=_phase_names)


class CPUOffload:
    """Optimizer state in host memory during ``phases``; copied back synchronously."""

    pinned = False

    def __init__(self, options: OffloadOptions, ctx: Any):
        self.phases = frozenset(options.phases)
        self.stats = OffloadStats()
        self._parked: dict[str, Parked] = {}
        self._hooked: set[int] = set()  # optimizers that carry our step pre-hook
        self._prefetched: dict[str, dict[Any, dict[str, Any]]] = {}
        self._prefetch_done: Any = None  # CUDA event on the side stream
        self._stream: Any = None
        self._cuda: torch.device | None = None  # the GPU whose state is parked (pinned copies)
        self._stale = False  # the state was replaced under us (a resume or a rollback)

    # -- moving ----------------------------------------------------------------------------------

    @property
    def offloaded(self) -> bool:
        return bool(self._parked)

    def _pin(self, t: torch.Tensor) -> bool:
        return self.pinned and t.is_cuda and torch.cuda.is_available()

    def _to_host(self, t: torch.Tensor) -> torch.Tensor:
        pin = self._pin(t)
        if pin:
            self._cuda = t.device
        try:
            host = torch.empty_like(t, device="cpu", pin_memory=pin)  # keeps the strides
        except RuntimeError:  # a layout the pinned allocator cannot give: contiguous instead
            host = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=pin)
        host.copy_(t, non_blocking=pin)
        return host

    def _to_device(self, host: torch.Tensor, device: torch.device) -> torch.Tensor:
        out = torch.empty_like(host, device=device)
        out.copy_(host, non_blocking=host.is_pinned() and device.type == "cuda")
        return out

    def park(self, key: str, optimizer: torch.optim.Optimizer) -> None:
        """Move ``optimizer``'s state to host memory (no-op if it is parked already)."""
        if key in self._parked:
            return
        entries: dict[Any, tuple[dict[str, Any], Any]] = {}
        asynchronous = False
        for param, state in list(optimizer.state.items()):
            devices = tree_map(state, lambda t: t.device)
            host = tree_map(state, self._to_host)
            asynchronous = asynchronous or any(t.is_pinned() for t in _tensors(host))
            optimizer.state[param] = host
            entries[param] = (host, devices)
            self.stats.bytes_out += tensor_bytes(host)
        # Pinned copies run asynchronously on the current stream: remember when they are done.
        copied = torch.cuda.current_stream(self._cuda).record_event() if asynchronous else None
        self._parked[key] = Parked(optimizer, entries, copied)
        if id(optimizer) not in self._hooked:
            optimizer.register_step_pre_hook(self._before_optimizer_step)
            self._hooked.add(id(optimizer))
        self.stats.offloads += 1

    def unpark(self, key: str) -> None:
        """Give ``key``'s optimizer its state back on its devices (prefetched copies if ready)."""
        parked = self._parked.pop(key, None)
        if parked is None:
            return
        ready = self._prefetched.pop(key, None)
        if ready is not None and self._prefetch_done is not None:
            current = torch.cuda.current_stream(self._cuda)
            current.wait_event(self._prefetch_done)
            for state in ready.values():  # allocated on the side stream, used on this one
                tree_map(state, lambda t: t.record_stream(current) if t.is_cuda else None)
        optimizer = parked.optimizer
        moved = 0
        for param, (host, devices) in parked.entries.items():
            if optimizer.state.get(param) is not host:
                continue  # replaced since we parked it (loaded from a checkpoint): leave it
            if ready is not None and param in ready:
                optimizer.state[param] = ready[param]
            else:  # on the current stream, so ordered after the copies out
                optimizer.state[param] = tree_map2(host, devices, self._to_device)
            moved += tensor_bytes(host)
        self.stats.restores += 1
        self.stats.bytes_in += moved
        if not self._prefetched:
            self._prefetch_done = None

    def offload_all(self, trainer: Any) -> None:
        """Park every optimizer of the run; a prefetch in flight is dropped."""
        self._settle()
        self._prefetched.clear()
        self._prefetch_done = None
        for key, optimizer in trainer.optimizers.items():
            self.park(key, optimizer)

    def restore_all(self) -> None:
        """Unpark every optimizer."""
        self._stale = False
        for key in list(self._parked):
            self.unpark(key)

    def _settle(self) -> None:
        """After a resume or rollback, bring back what is still ours; reloaded state is already
        on the device and is left alone (``unpark`` checks identity)."""
        if self._stale:
            self.restore_all()

    def prefetch(self) -> None:
        """Start copying the parked state back ahead of need (``cpu_pinned`` only).

        Any plugin may call this when it knows the offloaded phase is about to end; the restore
        at the next phase then only waits for the copies.
        """

    def _before_optimizer_step(self, optimizer: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
        for key, parked in list(self._parked.items()):
            if parked.optimizer is optimizer:
                self.unpark(key)
                self.stats.restores_on_step += 1

    # -- hooks -----------------------------------------------------------------------------------

    @hookimpl
    def train_start(self, trainer: Any) -> None:
        names = [p.name for p in trainer.schedule.phases]
        if not self.phases & set(names):
            raise BadInput(
                f"offload.phases: none of {sorted(self.phases)} is a phase of the schedule "
                f"(its phases: {', '.join(names)}), so nothing would ever be offloaded"
            )

    @hookimpl
    def phase_enter(self, trainer: Any, phase: Any) -> None:
        if phase.name in self.phases:
            self.offload_all(trainer)
        else:
            self.restore_all()

    @hookimpl
    def pre_step(self, trainer: Any) -> None:
        self._resettle(trainer)

    def _resettle(self, trainer: Any) -> None:
        # A rollback mid-phase loads state onto the device without a phase change: settle it
        # and, inside an offloaded phase, park again.
        if self._stale:
            self._settle()
            if trainer.phase is not None and trainer.phase.name in self.phases:
                self.offload_all(trainer)

    @hookimpl
    def checkpoint(self, state: MutableMapping[str, Any]) -> None:
        # The optimizers' state dicts (already collected) point at our host copies; make sure
        # asynchronous copies into them have finished before they are serialised.
        for parked in self._parked.values():
            if parked.copied is not None:
                parked.copied.synchronize()

    @hookimpl
    def restore(self, state: Mapping[str, Any]) -> None:
        # A resume or a rollback is about to replace (some of) the optimizers' state with
        # freshly loaded tensors on the device; sort it out before the next step.
        self._prefetched.clear()
        self._prefetch_done = None
        self._stale = True

    @hookimpl
    def train_end(self) -> None:
        self.restore_all()  # a finished run leaves its optimizers as they normally are


class PinnedCPUOffload(CPUOffload):
    """Optimizer state in pinned host memory during ``phases``, copied asynchronously, and
    copied back ahead of need on a side CUDA stream (see the module docstring)."""

    pinned = True

    def prefetch(self) -> None:
        if not self._parked or self._prefetched:
            return
        side = None
        if torch.cuda.is_available() and any(p.copied is not None for p in self._parked.values()):
            if self._stream is None:
                self._stream = torch.cuda.Stream(device=self._cuda)
            side = self._stream
            for parked in self._parked.values():
                if parked.copied is not None:
                    side.wait_event(parked.copied)
        with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
            for key, parked in self._parked.items():
                self._prefetched[key] = {
                    param: tree_map2(host, devices, self._to_device)
                    for param, (host, devices) in parked.entries.items()
                }
        self._prefetch_done = side.record_event() if side is not None else None
        self.stats.prefetches += 1

    @hookimpl
    def pre_step(self, trainer: Any) -> None:
        self._resettle(trainer)
        phase = trainer.phase
        if phase is None or phase.name not in self.phases:
            return
        if self._prefetched or not self._parked or trainer.state.step + 1 >= trainer.config.run.steps:
            return
        if _steps_left(trainer.schedule, trainer, phase) == 1:
            self.prefetch()  # overlaps with this, the phase's last step


def _steps_left(schedule: Any, trainer: Any, phase: Any) -> int | None:
    """Steps left in the current phase, this one included, as far as the schedule can tell:
    its ``phase_steps_left(trainer)`` if it has one (schedules that decide phase lengths as they
    go), else ``steps_of(phase)`` minus the steps taken in the phase; None if it cannot tell."""
    if isinstance(schedule, KnowsStepsLeft):
        return schedule.phase_steps_left(trainer)
    if isinstance(schedule, KnowsPhaseLengths):
        return schedule.steps_of(phase) - trainer.state.phase_step
    return None


@hookimpl
def phasetrain_kinds() -> list[Kind]:
    return [Kind("offload", "where optimizer state lives in each phase", contracts="phasetrain.plugins.offload_contracts")]


@hookimpl
def phasetrain_components() -> list[Component]:
    return [
        Component("offload", "none", NoOffload, NoOptions, "optimizer state stays on the device", default=True),
        Component("offload", "cpu", CPUOffload, OffloadOptions,
                  "optimizer state in host memory during the listed phases"),
        Component("offload", "cpu_pinned", PinnedCPUOffload, OffloadOptions,
                  "pinned host memory, asynchronous copies, restore started ahead of need"),
    ]
