"""Built-in learning-rate schedules, all from torch.optim.lr_scheduler.

Each factory gets ``ctx.optimizer`` and ``ctx.steps`` (the steps the optimizer will take) and
returns a scheduler that the kernel steps once per optimizer step. ``warmup_steps`` prepends a
linear warm-up (LinearLR) through SequentialLR. ``wsd`` (warmup-stable-decay) is a LambdaLR:
constant after the warm-up, then a decay over the last ``decay_fraction`` of the steps.

A resumed run may change ``run.steps``. ``constant``, ``step`` and ``exponential`` do not depend on
the length of the run and simply go on. ``cosine`` and ``onecycle`` are shaped by it: they keep
the plan they were made with (it is part of their checkpointed state) and, past its last step,
hold its final learning rate; a resume that lengthens or shortens the run says so. To decay over
a new length instead, start a new run. ``wsd`` is shaped from the run's current length on every
build: a resume that changes ``run.steps`` moves its decay to the new last steps.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import attrs
from torch.optim import lr_scheduler as sched

from phasetrain import Component, hookimpl
from phasetrain.config import non_negative, one_of, positive, probability


@attrs.define
class ConstantOptions:
    warmup_steps: int = attrs.field(default=0, validator=non_negative)


@attrs.define
class CosineOptions:
    warmup_steps: int = attrs.field(default=0, validator=non_negative)
    min_lr_ratio: float = attrs.field(default=0.1, validator=probability)  # final lr / initial lr


@attrs.define
class StepOptions:
    warmup_steps: int = attrs.field(default=0, validator=non_negative)
    step_size: int = attrs.field(default=1000, validator=positive)
    gamma: float = attrs.field(default=0.5, validator=positive)


@attrs.define
class ExponentialOptions:
    warmup_steps: int = attrs.field(default=0, validator=non_negative)
    gamma: float = attrs.field(default=0.999, validator=positive)


@attrs.define
class OneCycleOptions:
    max_lr_factor: float = attrs.field(default=10.0, validator=positive)  # peak lr / optimizer lr
    pct_start: float = attrs.field(default=0.3, validator=probability)


class Planned:
    """A schedule shaped by the length of the run, made for ``planned_steps`` steps: past them it
    holds its last learning rate. The plan is in ``state_dict()``, so a resume keeps it."""

    planned_steps: int | None = None  # None while torch's constructor takes its first step
    _built_for: int = 0  # the steps this run gives it (not saved: a resume may change them)
    _early = 0  # OneCycleLR reaches its final rate a step before total_steps, then turns back up

    def step(self, *args: Any) -> None:
        if self.planned_steps is not None and self.last_epoch >= self.planned_steps - self._early:
            self.last_epoch += 1  # counted as a step; the learning rate stays
            return
        super().step(*args)  # type: ignore[misc]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()  # type: ignore[misc]
        state.pop("_built_for", None)
        return state

    @hookimpl
    def restore(self, trainer: Any) -> None:
        if self.planned_steps is None or self.planned_steps == self._built_for or not trainer.strategy.main:
            return
        lr = ", ".join(f"{g['lr']:.3g}" for g in self.optimizer.param_groups)  # type: ignore[attr-defined]
        what = f"holds its final learning rate after {self.planned_steps} steps" if self._built_for > self.planned_steps \
            else f"will not reach its end in the {self._built_for} steps this run now gives it"
        print(f"phasetrain: note: the learning-rate schedule was planned for {self.planned_steps} steps when the "
              f"run started and keeps that plan on resume: it {what} (learning rate now {lr}); to plan again "
              "for the new length, start a new run", file=sys.stderr)


def planned(cls: type, **members: Any) -> type:
    """``cls`` (a torch scheduler) as a :class:`Planned` schedule."""
    return type(f"Planned{cls.__name__}", (Planned, cls), members)


PlannedSequentialLR, PlannedCosineAnnealingLR = planned(sched.SequentialLR), planned(sched.CosineAnnealingLR)
PlannedOneCycleLR = planned(sched.OneCycleLR, _early=1)


def _plan(schedule: Any, steps: int) -> Any:
    schedule.planned_steps = schedule._built_for = steps
    return schedule


@attrs.define
class WSDOptions:
    warmup_steps: int = attrs.field(default=0, validator=non_negative)
    decay_fraction: float = attrs.field(default=0.2, validator=probability)  # the last steps that decay
    min_lr_ratio: float = attrs.field(default=0.0, validator=probability)  # final lr / initial lr
    # "sqrt": 1 - sqrt(progress), as in Hägele et al. (2024); "linear"; "cosine"
    shape: str = attrs.field(default="sqrt", validator=one_of("sqrt", "linear", "cosine"))


def _with_warmup(optimizer: Any, warmup: int, main: Any, sequential: type = sched.SequentialLR) -> Any:
    if warmup <= 0:
        return main
    ramp = sched.LinearLR(optimizer, start_factor=1.0 / (warmup + 1), end_factor=1.0, total_iters=warmup)
    return sequential(optimizer, [ramp, main], milestones=[warmup])


def constant(o: ConstantOptions, ctx: Any) -> Any:
    main = sched.ConstantLR(ctx.optimizer, factor=1.0, total_iters=0)
    return _with_warmup(ctx.optimizer, o.warmup_steps, main)


def cosine(o: CosineOptions, ctx: Any) -> Any:
    span = max(1, ctx.steps - o.warmup_steps)
    base = ctx.optimizer.param_groups[0]["lr"]
    if o.warmup_steps <= 0:
        return _plan(PlannedCosineAnnealingLR(ctx.optimizer, T_max=span, eta_min=base * o.min_lr_ratio), span)
    main = sched.CosineAnnealingLR(ctx.optimizer, T_max=span, eta_min=base * o.min_lr_ratio)
    return _plan(_with_warmup(ctx.optimizer, o.warmup_steps, main, PlannedSequentialLR), o.warmup_steps + span)


def step(o: StepOptions, ctx: Any) -> Any:
    main = sched.StepLR(ctx.optimizer, step_size=o.step_size, gamma=o.gamma)
    return _with_warmup(ctx.optimizer, o.warmup_steps, main)


def exponential(o: ExponentialOptions, ctx: Any) -> Any:
    return _with_warmup(ctx.optimizer, o.warmup_steps, sched.ExponentialLR(ctx.optimizer, gamma=o.gamma))


def onecycle(o: OneCycleOptions, ctx: Any) -> Any:
    peak, total = ctx.optimizer.param_groups[0]["lr"] * o.max_lr_factor, max(2, ctx.steps)
    return _plan(PlannedOneCycleLR(ctx.optimizer, max_lr=peak, total_steps=total, pct_start=o.pct_start), total)


def wsd(o: WSDOptions, ctx: Any) -> Any:
    total = max(1, ctx.steps)
    decay = round(o.decay_fraction * total)
    start = total - decay
    shapes = {"sqrt": lambda x: 1 - math.sqrt(x), "linear": lambda x: 1 - x,
              "cosine": lambda x: 0.5 * (1 + math.cos(math.pi * x))}
    shape = shapes[o.shape]

    def factor(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / (o.warmup_steps + 1)
        if step < start:
            return 1.0
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * shape(min(1.0, (step - start) / max(1, decay)))

    return sched.LambdaLR(ctx.optimizer, factor)


@hookimpl
def phasetrain_components() -> list[Component]:
    return [
        Component("lr_schedule", "constant", constant, ConstantOptions, "constant lr, optional warm-up", default=True),
        Component("lr_schedule", "cosine", cosine, CosineOptions,
                  "cosine decay to min_lr_ratio over the planned steps, then held; optional warm-up"),
        Component("lr_schedule", "step", step, StepOptions, "multiply by gamma every step_size steps"),
        Component("lr_schedule", "exponential", exponential, ExponentialOptions, "multiply by gamma every step"),
        Component("lr_schedule", "onecycle", onecycle, OneCycleOptions,
                  "one-cycle policy (OneCycleLR) over the planned steps, then held"),
        Component("lr_schedule", "wsd", wsd, WSDOptions, "warmup, stable, then decay over the last steps"),
    ]
