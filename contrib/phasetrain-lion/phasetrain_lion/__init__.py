"""The Lion optimizer (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms") for
phasetrain, through the ``lion-pytorch`` package.

Installing this distribution is enough: a config then says ``[optimizer] use = "lion"``.
"""

from __future__ import annotations

from typing import Any

import attrs
from lion_pytorch import Lion

from phasetrain import Component, hookimpl
from phasetrain.config import FieldValueError, non_negative, positive


@attrs.define
class LionOptions:
    lr: float = attrs.field(default=1e-4, validator=positive)  # Lion wants 3-10x less than AdamW
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.99))
    weight_decay: float = attrs.field(default=0.0, validator=non_negative)

    @betas.validator
    def _betas(self, attribute: Any, value: tuple[float, float]) -> None:
        if not all(0.0 <= b < 1.0 for b in value):
            raise FieldValueError(attribute.name, f"must be two numbers in [0, 1), got {value!r}")


def build_lion(options: LionOptions, ctx: Any) -> Lion:
    return Lion(ctx.params, lr=options.lr, betas=tuple(options.betas), weight_decay=options.weight_decay)


@hookimpl
def phasetrain_components() -> list[Component]:
    return [Component("optimizer", "lion", build_lion, LionOptions, "Lion (sign momentum), from lion-pytorch")]
