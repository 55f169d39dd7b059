"""The values the loop hands to plugins and the protocols the objects of its kinds follow.

Plugins import these from here (``from phasetrain.types import Phase``) rather than from the
loop. Each protocol is ``runtime_checkable``: the kernel checks a built component with
``isinstance`` once, when it is built, and the conformance kit and ``docgen`` read them too.
Optional capabilities are protocols of their own, so nothing probes an object with ``getattr``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import attrs
import torch

# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class Phase:
    """A stretch of training with one behaviour, as the schedule names it.

    ``optimizer`` (and ``lr_schedule``) choose the phase's own optimizer; ``None`` means the
    run's ``[optimizer]`` section. Phases that share an optimizer share its state. ``real =
    False`` marks a phase whose steps take no training batch and compute no gradients: the loop
    fetches no batch for them, steps no learning-rate schedule, and agrees on a stop across
    processes only at a real step; plugins that change the training data wait for a real step.
    """

    name: str
    optimizer: Any = None  # a Choice of kind "optimizer", or None
    lr_schedule: Any = None  # a Choice of kind "lr_schedule", or None
    real: bool = True

    @property
    def optimizer_key(self) -> str:
        """Where this phase's optimizer lives in ``trainer.optimizers`` and in checkpoints."""
        return "main" if self.optimizer is None else f"phase.{self.name}"


@attrs.define
class TrainState:
    """Counters that, together with the components' own state, define where a run stands."""

    step: int = 0  # completed steps
    batches: int = 0  # micro-batches consumed: the data position
    phase: str = ""  # name of the current phase
    phase_step: int = 0  # steps completed in the current phase
    elapsed: float = 0.0  # seconds spent in fit() across resumes


@attrs.define
class Outcome:
    """How a run ended."""

    status: str  # "completed", "stopped" (ended early as planned), "interrupted" or "failed"
    steps: int
    seconds: float
    metrics: dict[str, Any] = attrs.field(factory=dict)  # last step's metrics, as numbers
    eval: dict[str, Any] = attrs.field(factory=dict)  # last evaluation
    error: str = ""
    run_dir: str = ""  # where the run wrote its checkpoints and logs


# ---------------------------------------------------------------------------------------------
# The kernel's kinds
# ---------------------------------------------------------------------------------------------


@runtime_checkable
class Task(Protocol):
    """``[task]``: the model, its batches and its loss.

    ``batch(index)`` returns micro-batch ``index`` (counted from the start of the run; the loop
    asks for them in order and saves the count, so a task whose batches are a pure function of
    the seed and the index resumes exactly with no state of its own).
    """

    model: torch.nn.Module

    def batch(self, index: int) -> Any: ...

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor: ...


@runtime_checkable
class Evaluates(Protocol):
    """A task that reports metrics on held-out data (``eval_loss`` and its own)."""

    def evaluate(self, model: torch.nn.Module) -> Mapping[str, Any]: ...


@runtime_checkable
class ReadsOwnShard(Protocol):
    """A task that reads only this process's part of each global batch itself: the loop asks it
    for ``batch_part(index, rank, size)`` instead of splitting ``batch(index)`` with
    ``strategy.shard``."""

    def batch_part(self, index: int, rank: int, size: int) -> Any: ...


@runtime_checkable
class ExportsModel(Protocol):
    """A task whose saved model differs from the trained one (``load_model`` returns this)."""

    def export_model(self, model: torch.nn.Module) -> torch.nn.Module: ...


@runtime_checkable
class Optimizer(Protocol):
    """``[optimizer]``: anything shaped like a ``torch.optim.Optimizer``. An optimizer that must
    be stepped with a closure (L-BFGS) sets ``requires_closure = True``."""

    param_groups: list[dict[str, Any]]

    def step(self, closure: Any = None) -> Any: ...

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class LrSchedule(Protocol):
    """``[lr_schedule]``: a ``torch.optim.lr_scheduler`` scheduler; the loop steps it once after
    every real step of its optimizer, and its state goes into checkpoints."""

    def step(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class Schedule(Protocol):
    """``[schedule]``: which phase runs at each step.

    ``phases`` lists every phase ``phase()`` may return (their optimizers are built before the
    run starts); ``phase(trainer)`` is asked before every step and returns the same object for
    as long as a phase lasts.
    """

    phases: Sequence[Phase]

    def phase(self, trainer: Any) -> Phase: ...


@runtime_checkable
class KnowsPhaseLengths(Protocol):
    """A schedule that can tell how many steps a phase's optimizer will take (learning-rate
    schedules are planned over it; otherwise over ``run.steps``)."""

    def steps_of(self, phase: Phase) -> int: ...


@runtime_checkable
class Precision(Protocol):
    """``[precision]``: how the forward, the backward and the optimizer step run.

    ``dtype`` is the dtype of the parameters and of the inputs a task builds;
    ``handles_overflow`` says that the policy deals with infinite gradients itself (the step's
    non-finite check then leaves the gradients to it); ``supports_closure_optimizers`` is False
    when the policy cannot drive an optimizer that needs a closure.
    """

    dtype: torch.dtype
    handles_overflow: bool
    supports_closure_optimizers: bool

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module: ...

    def autocast(self) -> AbstractContextManager: ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self, optimizer: Any, closure: Any) -> torch.Tensor: ...


@runtime_checkable
class Unscales(Protocol):
    """A precision policy whose gradients are scaled: ``unscale(optimizer)`` divides them back
    before ``after_backward`` fires, so clipping and logging see true gradients."""

    def unscale(self, optimizer: Any) -> None: ...


@runtime_checkable
class Strategy(Protocol):
    """``[strategy]``: how the model is wrapped, how work is split across processes and how
    they agree. The kernel's ``single`` is one process; a distributed plugin provides others.

    ``rank``/``size``/``local_rank`` place this process; ``main`` is the process that writes
    logs and checkpoints. ``device(name)`` resolves ``run.device`` for this process;
    ``wrap(model)`` returns the module the real step trains (``trainer.model`` stays the plain
    one); ``shard(batch)`` is this process's part of a global batch; ``no_sync(module)`` is a
    context for micro-batches whose gradients are not exchanged yet; ``mean(tensor)``,
    ``any(flag)``, ``gather(obj)`` and ``barrier()`` are the agreements the loop needs;
    ``close()`` leaves the group.
    """

    rank: int
    size: int
    local_rank: int

    @property
    def main(self) -> bool: ...

    def device(self, name: str) -> torch.device: ...

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module: ...

    def shard(self, batch: Any) -> Any: ...

    def no_sync(self, module: torch.nn.Module) -> AbstractContextManager: ...

    def mean(self, value: torch.Tensor) -> torch.Tensor: ...

    def any(self, flag: bool) -> bool: ...

    def gather(self, obj: Any) -> list[Any]: ...

    def barrier(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class Store(Protocol):
    """``[store]``: where checkpoints are written and read back.

    ``save(trainer, state)`` writes ``state`` (the run's ``state_dict()`` after ``save_start``)
    as the checkpoint of ``trainer.step`` and returns where; every process calls it.
    ``latest(path, report, accept=None)`` returns ``(checkpoint, state, meta)`` for the
    checkpoint at ``path``, or the newest good one of the run directory at ``path``; it never runs
    code from a file and raises ``CheckpointError`` if none loads. ``accept(checkpoint, state,
    meta)``, when given, applies a candidate: if it raises ``CheckpointError`` or an exception
    that is not a ``PhasetrainError`` the candidate does not fit, and the previous one is tried.
    Bad candidates are passed to ``report``. ``meta["config"]`` is the run's config. A store's
    factory also accepts ``ctx=None``, to read outside a run.
    """

    def save(self, trainer: Any, state: Mapping[str, Any]) -> Any: ...

    def latest(self, path: Any, report: Any = None, accept: Any = None) -> tuple[Any, dict[str, Any], dict[str, Any]]: ...


def missing(obj: Any, protocol: type) -> list[str]:
    """The members of ``protocol`` that ``obj`` lacks (what an ``isinstance`` check refused)."""
    names: set[str] = set()
    for base in protocol.__mro__:
        if base.__module__ not in ("typing", "builtins"):
            names |= {n for n in vars(base) if not n.startswith("_")} | set(getattr(base, "__annotations__", {}))
    return sorted(n for n in names if not hasattr(obj, n))
