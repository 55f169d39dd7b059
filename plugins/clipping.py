"""Gradient clipping: the ``[grad_clip]`` kind, declared here, and its ``norm`` and ``value``
components.

Both act in ``after_backward``, when the step's gradients are complete (all micro-batches,
unscaled by the precision policy) and the optimizer has not used them yet, and both add the
gradient norm measured *before* clipping to the step's metrics as ``grad_norm`` (a 0-dim tensor;
loggers turn it into a number when they write). They use ``torch.nn.utils``:

- ``norm``: ``clip_grad_norm_`` — scale all gradients together so that their ``norm_type``-norm
  is at most ``max_norm``;
- ``value``: ``clip_grad_value_`` — clamp every gradient element to ``[-max_value, max_value]``.

Under DDP the gradients are already all-reduced when ``after_backward`` fires, so the norm is
the global one on every process. Under FSDP each process holds a shard of every gradient (a
DTensor): ``clip_grad_norm_`` reduces the shards' norms across processes, so the norm and the
clipping are global too, and the norm is reported as a plain tensor.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch

from phasetrain import Component, hookimpl
from phasetrain.config import FieldValueError, FloatOrInf, positive
from phasetrain.plugins.distributed import is_dtensor
from phasetrain.registry import Kind


def _norm_type(_instance: Any, attribute: Any, value: float) -> None:  # inf is allowed: its type is FloatOrInf
    if not (value >= 1.0 or math.isinf(value)):
        raise FieldValueError(attribute.name, f"must be >= 1 or inf, got {value!r}")


@attrs.define
class NormOptions:
    max_norm: float = attrs.field(default=1.0, validator=positive)  # largest total gradient norm allowed
    norm_type: FloatOrInf = attrs.field(default=2.0, validator=_norm_type)  # p of the p-norm (inf: max abs)


@attrs.define
class ValueOptions:
    max_value: float = attrs.field(default=1.0, validator=positive)  # gradients are clamped to [-max_value, max_value]


class ClipNorm:
    """Clips the total gradient norm (``torch.nn.utils.clip_grad_norm_``)."""

    def __init__(self, options: NormOptions, ctx: Any):
        self.options = options
        self.norm: torch.Tensor | None = None  # the last measured pre-clip norm

    def clip(self, params: list[torch.Tensor]) -> torch.Tensor:
        o = self.options
        return torch.nn.utils.clip_grad_norm_(params, o.max_norm, o.norm_type, foreach=True)

    @hookimpl
    def after_backward(self, trainer: Any) -> None:
        params = [p for p in trainer.trainable if p.grad is not None]
        self.norm = self.clip(params) if params else None
        if is_dtensor(self.norm):  # replicated: every process holds the global norm
            self.norm = self.norm.to_local()

    @hookimpl
    def post_step(self, metrics: Any) -> None:
        if self.norm is not None:
            metrics["grad_norm"] = self.norm.detach()
            self.norm = None  # a step without gradients (a predicted one) reports none


class ClipValue(ClipNorm):
    """Clamps every gradient element (``torch.nn.utils.clip_grad_value_``)."""

    def __init__(self, options: ValueOptions, ctx: Any):  # noqa: D107
        self.options, self.norm = options, None

    def clip(self, params: list[torch.Tensor]) -> torch.Tensor:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        torch.nn.utils.clip_grad_value_(params, self.options.max_value, foreach=True)
        return norm


@hookimpl
def phasetrain_kinds() -> list[Kind]:
    return [Kind("grad_clip", "gradient clipping between backward and the optimizer step",
                 contracts="phasetrain.plugins.generic_contracts")]


@hookimpl
def phasetrain_components() -> list[Component]:
    return [
        Component("grad_clip", "norm", ClipNorm, NormOptions, "clip the total gradient norm (clip_grad_norm_)"),
        Component("grad_clip", "value", ClipValue, ValueOptions, "clamp every gradient element (clip_grad_value_)"),
    ]
