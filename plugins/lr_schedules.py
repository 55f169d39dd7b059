"""Built-in learning-rate schedules, all from torch.optim.lr_scheduler.

Each factory gets ``ctx.optimizer`` and ``ctx.steps`` (the steps the optimizer will take) and
returns a scheduler that the kernel steps once per optimizer step. ``warmup_steps`` prepends a
linear warm-up (LinearLR) through SequentialLR. ``wsd`` (warmup-stable-decay) is a LambdaLR:
constant after the warm-up, then a decay over the last ``decay_fraction`` of the steps.
"""

from __future__ import annotations

import math
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


@attrs.define
class WSDOptions:
    warmup_steps: int = attrs.field(default=0, validator=non_negative)
    decay_fraction: float = attrs.field(default=0.2, validator=probability)  # the last steps that decay
    min_lr_ratio: float = attrs.field(default=0.0, validator=probability)  # final lr / initial lr
    # "sqrt": 1 - sqrt(progress), as in Hägele et al. (2024); "linear"; "cosine"
    shape: str = attrs.field(default="sqrt", validator=one_of("sqrt", "linear", "cosine"))


def _with_warmup(optimizer: Any, warmup: int, main: Any) -> Any:
    if warmup <= 0:
        return main
    ramp = sched.LinearLR(optimizer, start_factor=1.0 / (warmup + 1), end_factor=1.0, total_iters=warmup)
    return sched.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def constant(o: ConstantOptions, ctx: Any) -> Any:
    main = sched.ConstantLR(ctx.optimizer, factor=1.0, total_iters=0)
    return _with_warmup(ctx.optimizer, o.warmup_steps, main)


def cosine(o: CosineOptions, ctx: Any) -> Any:
    span = max(1, ctx.steps - o.warmup_steps)
    base = ctx.optimizer.param_groups[0]["lr"]
    main = sched.CosineAnnealingLR(ctx.optimizer, T_max=span, eta_min=base * o.min_lr_ratio)
    return _with_warmup(ctx.optimizer, o.warmup_steps, main)


def step(o: StepOptions, ctx: Any) -> Any:
    main = sched.StepLR(ctx.optimizer, step_size=o.step_size, gamma=o.gamma)
    return _with_warmup(ctx.optimizer, o.warmup_steps, main)


def exponential(o: ExponentialOptions, ctx: Any) -> Any:
    return _with_warmup(ctx.optimizer, o.warmup_steps, sched.ExponentialLR(ctx.optimizer, gamma=o.gamma))


def onecycle(o: OneCycleOptions, ctx: Any) -> Any:
    peak = ctx.optimizer.param_groups[0]["lr"] * o.max_lr_factor
    return sched.OneCycleLR(ctx.optimizer, max_lr=peak, total_steps=max(2, ctx.steps), pct_start=o.pct_start)


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
        Component("lr_schedule", "cosine", cosine, CosineOptions, "cosine decay to min_lr_ratio, optional warm-up"),
        Component("lr_schedule", "step", step, StepOptions, "multiply by gamma every step_size steps"),
        Component("lr_schedule", "exponential", exponential, ExponentialOptions, "multiply by gamma every step"),
        Component("lr_schedule", "onecycle", onecycle, OneCycleOptions, "one-cycle policy (OneCycleLR)"),
        Component("lr_schedule", "wsd", wsd, WSDOptions, "warmup, stable, then decay over the last steps"),
    ]
