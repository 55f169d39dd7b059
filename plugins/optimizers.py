"""Built-in optimizers: thin configs over torch.optim.

Each factory gets ``ctx.params`` (the trainable parameters) and returns a torch optimizer.
An optimizer that must be stepped with a closure says so with ``requires_closure = True``;
the kernel's step hands every optimizer a closure anyway, so both kinds just work.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from phasetrain import Component, hookimpl
from phasetrain.config import non_negative, one_of, positive, probability


@attrs.define
class SGDOptions:
    lr: float = attrs.field(default=0.01, validator=positive)
    momentum: float = attrs.field(default=0.0, validator=probability)
    dampening: float = attrs.field(default=0.0, validator=probability)
    weight_decay: float = attrs.field(default=0.0, validator=non_negative)
    nesterov: bool = attrs.field(default=False)

    @nesterov.validator
    def _needs_momentum(self, attribute: Any, value: bool) -> None:
        from phasetrain.config import FieldValueError

        if value and (self.momentum <= 0 or self.dampening != 0):
            raise FieldValueError(attribute.name, "needs momentum > 0 and dampening = 0")


@attrs.define
class AdamOptions:
    lr: float = attrs.field(default=1e-3, validator=positive)
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.999))
    eps: float = attrs.field(default=1e-8, validator=positive)
    weight_decay: float = attrs.field(default=0.0, validator=non_negative)
    amsgrad: bool = False
    foreach: bool = True  # multi-tensor kernels: faster for many small tensors

    @betas.validator
    def _betas(self, attribute: Any, value: tuple[float, float]) -> None:
        from phasetrain.config import FieldValueError

        if not all(0.0 <= b < 1.0 for b in value):
            raise FieldValueError(attribute.name, f"must be two numbers in [0, 1), got {value!r}")


@attrs.define
class AdamWOptions(AdamOptions):
    weight_decay: float = attrs.field(default=0.01, validator=non_negative)


@attrs.define
class LBFGSOptions:
    lr: float = attrs.field(default=1.0, validator=positive)
    max_iter: int = attrs.field(default=20, validator=positive)  # inner iterations per step
    history_size: int = attrs.field(default=50, validator=positive)
    tolerance_grad: float = attrs.field(default=1e-9, validator=non_negative)
    tolerance_change: float = attrs.field(default=1e-12, validator=non_negative)
    line_search: str = attrs.field(default="strong_wolfe", validator=one_of("strong_wolfe", "none"))


class LBFGS(torch.optim.LBFGS):
    """torch.optim.LBFGS, marked as needing a closure."""

    requires_closure = True


def sgd(o: SGDOptions, ctx: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        ctx.params, lr=o.lr, momentum=o.momentum, dampening=o.dampening,
        weight_decay=o.weight_decay, nesterov=o.nesterov,
    )


def adam(o: AdamOptions, ctx: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(
        ctx.params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
        amsgrad=o.amsgrad, foreach=o.foreach,
    )


def adamw(o: AdamWOptions, ctx: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        ctx.params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
        amsgrad=o.amsgrad, foreach=o.foreach,
    )


def lbfgs(o: LBFGSOptions, ctx: Any) -> torch.optim.Optimizer:
    return LBFGS(
        ctx.params, lr=o.lr, max_iter=o.max_iter, history_size=o.history_size,
        tolerance_grad=o.tolerance_grad, tolerance_change=o.tolerance_change,
        line_search_fn=None if o.line_search == "none" else o.line_search,
    )


@hookimpl
def phasetrain_components() -> list[Component]:
    return [
        Component("optimizer", "sgd", sgd, SGDOptions, "torch.optim.SGD (momentum, Nesterov)"),
        Component("optimizer", "adam", adam, AdamOptions, "torch.optim.Adam", default=True),
        Component("optimizer", "adamw", adamw, AdamWOptions, "torch.optim.AdamW (decoupled weight decay)"),
        Component("optimizer", "lbfgs", lbfgs, LBFGSOptions, "torch.optim.LBFGS, stepped with a closure"),
    ]
