"""Built-in precision policies: ``fp32``, ``bf16``, ``fp16``, ``fp64`` and ``per_phase``.

A precision policy is asked four things by the kernel's step: a context manager for the forward
pass (``autocast()``), how to run backward (``backward(loss)``), how to step the optimizer with
the step's closure (``step(optimizer, closure) -> loss``), and, when the task builds its model,
how to cast it (``prepare(model)``); a policy that scales gradients also divides them back
(``unscale(optimizer)``) before ``after_backward`` fires. Every policy also says

- ``dtype``: the dtype of the parameters and of the inputs a task should build (float32 for the
  mixed-precision policies, which keep float32 master weights; float64 for ``fp64``);
- ``handles_overflow``: True when infinite gradients are expected and dealt with by the policy
  (fp16 loss scaling skips those steps), so the kernel's non-finite guard leaves them alone;
- ``supports_closure_optimizers``: False when the policy cannot drive an optimizer that needs a
  closure (L-BFGS): GradScaler must unscale and check the gradients between backward and the
  update, which a closure optimizer's line search does not allow.

The step's closure zeroes the gradients, runs forward and backward over the step's micro-batches
through ``autocast()`` and ``backward()``, and returns the detached loss (unscaled).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import attrs
import torch

from phasetrain import Component, NoOptions, hookimpl
from phasetrain.config import FieldValueError, PrecisionChoice, positive, in_range
from phasetrain.errors import BadInput
from phasetrain.types import Unscales

Closure = Callable[[], torch.Tensor]

STATE_KEY = "precision"
_NO_AUTOCAST = contextlib.nullcontext()  # reusable: it holds no state  # this run's precision policy keeps its checkpoint state here


class Policy:
    """What every policy shares: plain float32 behaviour that subclasses adjust."""

    name = "fp32"
    dtype = torch.float32
    handles_overflow = False
    supports_closure_optimizers = True

    def __init__(self, options: Any, ctx: Any):
        self.device_type = ctx.device.type if ctx is not None else "cpu"

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def autocast(self) -> contextlib.AbstractContextManager:
        return _NO_AUTOCAST

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, optimizer: torch.optim.Optimizer, closure: Closure) -> torch.Tensor:
        # An optimizer that needs a closure (L-BFGS) calls it as often as it likes; for the others
        # the closure runs once, here: stepping them without one spares torch's closure wrapper.
        if getattr(optimizer, "requires_closure", False):
            return optimizer.step(closure)
        loss = closure()
        optimizer.step()
        return loss

    # Plain, non-hook state accessors so that ``per_phase`` can carry its sub-policies' state.
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass

    def annotate(self, metrics: MutableMapping[str, Any]) -> None:
        """Add this policy's per-step fields to the step's metrics (none by default)."""


class FP32(Policy):
    """Full float32: no autocast, no loss scaling."""


class FP64(Policy):
    """Float64 weights and inputs: for problems (PINNs, L-BFGS) that need the extra digits.

    The model is cast in ``prepare``; tasks build their inputs in ``dtype``.
    """

    name = "fp64"
    dtype = torch.float64

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(torch.float64)


class BF16(Policy):
    """bfloat16 autocast over float32 master weights. bfloat16 has float32's exponent range, so
    no loss scaling is needed and closure optimizers (L-BFGS) work."""

    name = "bf16"
    compute_dtype = torch.bfloat16

    def __init__(self, options: Any, ctx: Any):
        super().__init__(options, ctx)
        if self.device_type == "cuda" and not torch.cuda.is_bf16_supported():
            raise BadInput(
                "precision bf16: this GPU has no bfloat16 support (needs compute capability 8.0+); "
                "use precision fp16"
            )

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device_type, dtype=self.compute_dtype)


def _above_one(_instance: Any, attribute: Any, value: float) -> None:
    if not value > 1.0:
        raise FieldValueError(attribute.name, f"must be > 1, got {value!r}")


@attrs.define
class FP16Options:
    # GradScaler keeps the scale in float32, so it must stay within float32's normal range.
    init_scale: float = attrs.field(default=2.0**16, validator=in_range(2.0**-100, 2.0**100))  # the starting loss scale
    growth_factor: float = attrs.field(default=2.0, validator=_above_one)  # scale x this after growth_interval clean steps
    backoff_factor: float = attrs.field(default=0.5, validator=in_range(2.0**-10, 0.999))  # scale x this after an overflow
    growth_interval: int = attrs.field(default=2000, validator=positive)  # steps without overflow before growing


LBFGS_MESSAGE = (
    "fp16 loss scaling cannot drive L-BFGS; use fp32/fp64 or bf16 for that stage "
    '(for example [precision] use = "per_phase", default = "fp16", phases = {{ {phase} = "fp32" }})'
)


class FP16(Policy):
    """float16 autocast with dynamic loss scaling (``torch.amp.GradScaler``).

    float16 overflows easily, so the loss is multiplied by a scale before backward; a step whose
    gradients came out infinite is skipped and the scale reduced, and after ``growth_interval``
    good steps the scale grows again. The scaler's state is saved in checkpoints.
    """

    name = "fp16"
    compute_dtype = torch.float16
    handles_overflow = True
    supports_closure_optimizers = False

    def __init__(self, options: FP16Options, ctx: Any):
        super().__init__(options, ctx)
        self.scaler = torch.amp.GradScaler(
            self.device_type,
            init_scale=options.init_scale,
            growth_factor=options.growth_factor,
            backoff_factor=options.backoff_factor,
            growth_interval=options.growth_interval,
        )
        self.skipped_steps = 0  # steps whose gradients overflowed (and were not applied)
        self._unscaled = False
        self._scale = float(options.init_scale)

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device_type, dtype=self.compute_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the loss scale (once per step, before ``after_backward``)."""
        self.scaler.unscale_(optimizer)
        self._unscaled = True

    def step(self, optimizer: torch.optim.Optimizer, closure: Closure) -> torch.Tensor:
        if getattr(optimizer, "requires_closure", False):
            raise BadInput(f"precision {self.name}: " + LBFGS_MESSAGE.format(phase="<stage>"))
        self._unscaled = False
        try:
            loss = closure()
        except Exception:  # a step abandoned after unscale(): the scaler must start the next one afresh
            if self._unscaled:
                self.scaler.update()
            raise
        self.scaler.step(optimizer)  # unscales, and skips the update if a gradient is inf/NaN
        self.scaler.update()
        scale = self.scaler.get_scale()  # scaler.step has synchronised already: cheap
        if scale < self._scale:
            self.skipped_steps += 1
        self._scale = scale
        return loss

    def annotate(self, metrics: MutableMapping[str, Any]) -> None:
        metrics["loss_scale"] = self._scale

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict(), "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.scaler.load_state_dict(dict(state["scaler"]))
        self.skipped_steps = int(state["skipped_steps"])
        self._scale = float(state["scaler"]["scale"])


# ---------------------------------------------------------------------------------------------
# Hooks shared by the top-level policies (a policy inside per_phase is not registered itself)
# ---------------------------------------------------------------------------------------------


def _closure_optimizer_phases(trainer: Any, policy_of: Callable[[str], Policy]) -> list[str]:
    """Names of the schedule's phases whose policy cannot drive their (closure) optimizer.

    Asked at ``train_start``, when every phase's optimizer is built, so a bad combination fails
    before the first step rather than when the L-BFGS stage begins.
    """
    return [
        phase.name for phase in trainer.schedule.phases
        if not policy_of(phase.name).supports_closure_optimizers
        and getattr(trainer.optimizers[phase.optimizer_key], "requires_closure", False)
    ]


class Registered:
    """Mixin: the hooks of a policy chosen directly in ``[precision]``."""

    @hookimpl(tryfirst=True)  # before loggers announce a run that cannot start
    def train_start(self, trainer: Any) -> None:
        bad = _closure_optimizer_phases(trainer, lambda _name: self)
        if bad:
            raise BadInput(f"precision {self.name}: phase {bad[0]!r}: " + LBFGS_MESSAGE.format(phase=bad[0]))

    @hookimpl
    def post_step(self, metrics: MutableMapping[str, Any]) -> None:
        self.annotate(metrics)

    @hookimpl
    def checkpoint(self, state: MutableMapping[str, Any]) -> None:
        own = self.state_dict()
        if own:
            state[STATE_KEY] = own

    @hookimpl
    def restore(self, state: Mapping[str, Any]) -> None:
        if STATE_KEY in state:
            self.load_state_dict(state[STATE_KEY])


class FP16Policy(Registered, FP16):
    """``fp16`` chosen directly: the policy plus its hooks (L-BFGS check, loss scale in the
    metrics, scaler state in checkpoints)."""


# fp32, fp64 and bf16 have no state, no per-step fields and drive every optimizer: they implement
# no hooks, so a plain run pays nothing per step.


# ---------------------------------------------------------------------------------------------
# per_phase
# ---------------------------------------------------------------------------------------------


def _fp32_choice() -> Any:
    return PrecisionChoice("fp32", NoOptions())


@attrs.define
class PerPhaseOptions:
    default: PrecisionChoice = attrs.field(factory=_fp32_choice)  # the policy of phases not listed in phases
    phases: dict[str, PrecisionChoice] = attrs.field(factory=dict)  # phase name -> policy, e.g. { lbfgs = "fp32" }


class PerPhase:
    """A different policy per phase of the schedule, switched when a phase is entered.

    ``default = "fp16"`` with ``phases = { lbfgs = "fp32" }`` runs Adam under fp16 loss scaling
    and the L-BFGS stage in float32. All sub-policies must keep the same parameter dtype (one
    model is shared by every phase): ``fp64`` can only be combined with ``fp64``. Identical
    entries share one policy object, so phases that use the same fp16 settings share one loss
    scale.
    """

    name = "per_phase"

    def __init__(self, options: PerPhaseOptions, ctx: Any):
        self._unique: list[tuple[Any, Policy]] = []
        self.default = self._build(options.default, ctx, "precision.default")
        self.by_phase = {
            phase: self._build(choice, ctx, f"precision.phases.{phase}")
            for phase, choice in options.phases.items()
        }
        dtypes = {p.dtype for _c, p in self._unique}
        if len(dtypes) > 1:
            names = ", ".join(f"{c.use} ({p.dtype})" for c, p in self._unique)
            raise BadInput(
                f"precision per_phase: all phases share one model, so their policies must keep one "
                f"parameter dtype; got {names}"
            )
        self.dtype = self.default.dtype
        self.current: Policy = self.default

    def _build(self, choice: Any, ctx: Any, where: str) -> Policy:
        if choice.use == self.name:
            raise BadInput(f"{where}: per_phase cannot contain per_phase")
        for known, policy in self._unique:
            if known == choice:
                return policy
        component = ctx.trainer.registry.get("precision", choice.use)
        policy = component.factory(choice.options, ctx)
        self._unique.append((choice, policy))
        return policy

    def policy_of(self, phase_name: str) -> Policy:
        return self.by_phase.get(phase_name, self.default)

    # -- the policy interface, delegated ---------------------------------------------------------

    @property
    def handles_overflow(self) -> bool:
        return self.current.handles_overflow

    @property
    def supports_closure_optimizers(self) -> bool:
        return self.current.supports_closure_optimizers

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.default.prepare(model)

    def autocast(self) -> contextlib.AbstractContextManager:
        return self.current.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        self.current.backward(loss)

    def step(self, optimizer: torch.optim.Optimizer, closure: Closure) -> torch.Tensor:
        return self.current.step(optimizer, closure)

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        if isinstance(self.current, Unscales):
            self.current.unscale(optimizer)

    # -- hooks -------------------------------------------------------------------------------------

    @hookimpl(tryfirst=True)
    def train_start(self, trainer: Any) -> None:
        names = [p.name for p in trainer.schedule.phases]
        unknown = sorted(set(self.by_phase) - set(names))
        if unknown:
            raise BadInput(
                f"precision.phases: no phase named {unknown[0]!r} in the schedule "
                f"(its phases: {', '.join(names)})"
            )
        bad = _closure_optimizer_phases(trainer, self.policy_of)
        if bad:
            policy = self.policy_of(bad[0])
            raise BadInput(
                f"precision.phases.{bad[0]}: {policy.name}: " + LBFGS_MESSAGE.format(phase=bad[0])
            )

    @hookimpl(tryfirst=True)
    def phase_enter(self, phase: Any) -> None:
        self.current = self.policy_of(phase.name)

    @hookimpl
    def post_step(self, metrics: MutableMapping[str, Any]) -> None:
        self.current.annotate(metrics)

    @hookimpl
    def checkpoint(self, state: MutableMapping[str, Any]) -> None:
        state[STATE_KEY] = {
            "policies": [{"use": c.use, "state": p.state_dict()} for c, p in self._unique]
        }

    @hookimpl
    def restore(self, state: Mapping[str, Any]) -> None:
        saved = state.get(STATE_KEY, {}).get("policies", [])
        for (choice, policy), entry in zip(self._unique, saved, strict=False):
            if entry["use"] == choice.use and entry["state"]:
                policy.load_state_dict(entry["state"])


@hookimpl
def phasetrain_components() -> list[Component]:
    return [
        Component("precision", "fp32", FP32, NoOptions, "float32 everywhere", default=True),
        Component("precision", "fp64", FP64, NoOptions, "float64 weights and inputs (PINNs, L-BFGS)"),
        Component("precision", "bf16", BF16, NoOptions, "bfloat16 autocast, float32 master weights"),
        Component("precision", "fp16", FP16Policy, FP16Options,
                  "float16 autocast with dynamic loss scaling (GradScaler)"),
        Component("precision", "per_phase", PerPhase, PerPhaseOptions,
                  "a precision policy per phase of the schedule"),
    ]
