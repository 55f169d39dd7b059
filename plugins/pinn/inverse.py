"""Unknown PDE coefficients, identified with the network: inverse problems.

A problem declares its unknowns (``Problem.unknowns``: name -> :class:`Unknown`) and reads them
in its residual with ``self.coefficient("nu")``. The ``pinn`` task makes them trainable scalars of
the model (an :class:`Unknowns` module at ``model.unknowns``), so the run's optimizers train them
with the network's weights, checkpoints carry them in the model's state dict, and a resumed run
continues with them bit for bit. Until the task binds them, ``coefficient`` returns the true
value, so the residual of the exact solution is still zero (the conformance kit checks that).

A positive unknown is trained as its logarithm: the step of an optimizer is then relative to the
value, which suits coefficients such as a viscosity of 0.003 that would otherwise need a
learning rate of their own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs
import torch
from torch import Tensor, nn

__all__ = ["Unknown", "Unknowns"]


@attrs.frozen
class Unknown:
    """A PDE coefficient to identify: its starting guess and, when known, its true value."""

    initial: float
    true: float | None = None  # for the reported error; the exact solution's coefficient
    positive: bool = False  # trained as log(value)

    def __attrs_post_init__(self) -> None:
        if self.positive and not self.initial > 0:
            raise ValueError(f"a positive unknown needs a positive initial value; got {self.initial}")


class Unknowns(nn.Module):
    """The trainable coefficients of a problem, ``raw[name]`` a 0-dim parameter each."""

    def __init__(self, unknowns: Mapping[str, Unknown]) -> None:
        super().__init__()
        self.spec = dict(unknowns)
        self.raw = nn.ParameterDict({
            name: nn.Parameter(torch.tensor(math.log(u.initial) if u.positive else u.initial, dtype=torch.float64))
            for name, u in self.spec.items()
        })

    def value(self, name: str) -> Tensor:
        """The coefficient's current value (0-dim, differentiable)."""
        raw = self.raw[name]
        return raw.exp() if self.spec[name].positive else raw

    def values(self) -> dict[str, float]:
        with torch.no_grad():
            return {name: float(self.value(name)) for name in self.spec}

    def errors(self) -> dict[str, float]:
        """``|value - true| / |true|`` of every unknown whose true value is known (absolute if 0)."""
        out = {}
        for name, value in self.values().items():
            true = self.spec[name].true
            if true is not None:
                out[name] = abs(value - true) / (abs(true) or 1.0)
        return out
