"""Built-in precision policies.

A precision policy is asked three things by the kernel's step: a context manager for the forward
pass (``autocast()``), how to run backward (``backward(loss)``) and how to step the optimizer
with the step's closure (``step(optimizer, closure) -> loss``). It may also cast the model when
the task builds it (``prepare(model)``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from phasetrain import Component, NoOptions, hookimpl


class FP32:
    """Full float32: no autocast, no loss scaling."""

    dtype = torch.float32

    def __init__(self, options: NoOptions, ctx: Any):
        self._null = contextlib.nullcontext()

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def autocast(self) -> contextlib.AbstractContextManager:
        return self._null

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, optimizer: torch.optim.Optimizer, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        return optimizer.step(closure)


@hookimpl
def phasetrain_components() -> list[Component]:
    return [Component("precision", "fp32", FP32, NoOptions, "float32 everywhere")]
