"""Shared helpers for the PINN math-layer tests.

Only fixtures live here (hypothesis settings are set per test module so that
nothing leaks into the rest of the test session).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from torch import Tensor

Field = Callable[[Tensor], Tensor]


def central_difference(f: Field, x: Tensor, dims: Sequence[int], h: float) -> Tensor:
    """Nested central finite differences of ``f`` (N, d) -> (N, k) along ``dims``.

    Independent of autograd: ``D_{k, rest} f(x) = (D_rest f(x + h e_k) - D_rest f(x - h e_k)) / 2h``.
    """
    if not dims:
        with torch.no_grad():
            return f(x)
    k, rest = dims[0], dims[1:]
    shift = torch.zeros_like(x)
    shift[:, k] = h
    return (central_difference(f, x + shift, rest, h) - central_difference(f, x - shift, rest, h)) / (2 * h)


@pytest.fixture
def fd() -> Callable[..., Tensor]:
    """``fd(f, x, dims, h=1e-4)``: finite-difference partial derivative (N, k) of ``f`` in float64."""

    def apply(f: Field, x: Tensor, dims: Sequence[int], h: float = 1e-4) -> Tensor:
        return central_difference(f, x.detach().to(torch.float64), list(dims), h)

    return apply


@pytest.fixture
def generator() -> torch.Generator:
    """A freshly seeded CPU generator."""
    return torch.Generator().manual_seed(1234)
