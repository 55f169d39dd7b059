"""Condition types: Dirichlet, Neumann, Robin, periodic, initial (with time derivatives) and
observations, each a :class:`~.problem_base.Condition` built for a problem.

Values are functions of the points: ``value(x) -> (N, k)`` (or (N,) for one output), where
``k`` is the number of ``outputs`` the condition constrains (all of them by default)::

    def conditions(self):
        return [
            dirichlet("wall", self, value=lambda x: torch.zeros(len(x), 1), where=lambda x: x[:, 0] < 0.5),
            neumann("outlet", self, flux=lambda x: torch.zeros(len(x), 1), where=lambda x: x[:, 0] >= 0.5),
            periodic("periodic", self, dim=0, derivatives=1),
            initial("initial", self, value=lambda x: torch.sin(math.pi * x[:, :1])),
            initial("initial_velocity", self, value=lambda x: torch.zeros(len(x), 1), order=1),
        ]

Boundary conditions draw points uniformly (in arc length) on the problem's domain boundary (the
lateral boundary at all times, for a problem with time), optionally only where ``where(x)``
holds; Neumann and Robin conditions carry each point's outward unit normal in their rows, so the
normal derivative ``∂u/∂n = ∇u · n`` is exact for any geometry. A periodic condition's rows are
pairs ``(x with x_dim = lower, the same point with x_dim = upper)``: a row is never split, so
the pairs stay together under ``residual_chunk`` and ``run.grad_accum_steps`` by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .derivatives import Derivatives
from .geometry import rejection
from .problem_base import Condition

__all__ = ["dirichlet", "neumann", "robin", "periodic", "initial", "observations"]

Value = Callable[[Tensor], Tensor]
Where = Callable[[Tensor], Tensor]


def _columns(values: Tensor, n: int) -> Tensor:
    return values.reshape(n, -1) if n else values.reshape(0, values.shape[-1] if values.dim() > 1 else 1)


def _outputs(problem: Any, outputs: Sequence[int] | None) -> list[int]:
    return list(range(problem.output_dim)) if outputs is None else [int(i) for i in outputs]


def _boundary(problem: Any, where: Where | None, normals: bool) -> Callable[[int, torch.Generator], Tensor]:
    """Rows ``[x]`` or ``[x, n]`` uniform on the domain's boundary where ``where(x)`` holds."""

    def draw(m: int, generator: torch.Generator) -> Tensor:
        points, normal = problem.domain.sample_boundary(m, generator)
        return torch.cat([points, normal], dim=1) if normals else points

    def sample(n: int, generator: torch.Generator) -> Tensor:
        d = problem.input_dim
        if where is None:
            return draw(n, generator)
        return rejection(lambda m: draw(m, generator), lambda rows: where(rows[:, :d]).reshape(-1).bool(),
                         n, f"{problem.name}: the boundary where the condition holds")

    return sample


def _normal_derivative(x: Tensor, u: Tensor, normals: Tensor, outputs: list[int]) -> Tensor:
    """``∇u_i · n`` (N, k) for the listed outputs."""
    return torch.stack([(Derivatives(u[:, i], x).gradient() * normals.to(u.dtype)).sum(dim=1) for i in outputs], 1)


def dirichlet(name: str, problem: Any, value: Value, *, outputs: Sequence[int] | None = None,
              where: Where | None = None) -> Condition:
    """``u = value(x)`` on the boundary (where ``where(x)``)."""
    cols = _outputs(problem, outputs)

    def residual(x: Tensor, u: Tensor) -> Tensor:
        return u[:, cols] - _columns(value(x.detach()), x.shape[0]).to(u.dtype)

    return Condition(name, _boundary(problem, where, normals=False), residual)


def neumann(name: str, problem: Any, flux: Value, *, outputs: Sequence[int] | None = None,
            where: Where | None = None) -> Condition:
    """``∂u/∂n = flux(x)`` on the boundary, ``n`` the outward unit normal."""
    cols = _outputs(problem, outputs)

    def residual(x: Tensor, u: Tensor, normals: Tensor) -> Tensor:
        return _normal_derivative(x, u, normals, cols) - _columns(flux(x.detach()), x.shape[0]).to(u.dtype)

    return Condition(name, _boundary(problem, where, normals=True), residual, data=problem.input_dim)


def robin(name: str, problem: Any, alpha: float, beta: float, value: Value, *,
          outputs: Sequence[int] | None = None, where: Where | None = None) -> Condition:
    """``alpha u + beta ∂u/∂n = value(x)`` on the boundary."""
    cols = _outputs(problem, outputs)

    def residual(x: Tensor, u: Tensor, normals: Tensor) -> Tensor:
        flux = _normal_derivative(x, u, normals, cols)
        return alpha * u[:, cols] + beta * flux - _columns(value(x.detach()), x.shape[0]).to(u.dtype)

    return Condition(name, _boundary(problem, where, normals=True), residual, data=problem.input_dim)


def periodic(name: str, problem: Any, dim: int, *, derivatives: int = 1,
             outputs: Sequence[int] | None = None) -> Condition:
    """``∂^j u / ∂x_dim^j`` equal at ``x_dim = lower`` and ``x_dim = upper`` for ``j = 0..derivatives``.

    Rows are pairs of points that differ only in column ``dim`` (the problem's box in every
    other column), so a pair is one row and stays whole under chunking.
    """
    cols = _outputs(problem, outputs)
    lo, hi = problem.lower[dim], problem.upper[dim]

    def sample(n: int, generator: torch.Generator) -> Tensor:
        base = problem.sample_interior(n, generator)
        low, high = base.clone(), base.clone()
        low[:, dim], high[:, dim] = lo, hi
        return torch.cat([low, high], dim=1)  # (n, 2d): one pair per row

    def residual(x: Tensor, u: Tensor) -> Tensor:
        terms = []
        for i in cols:
            d = Derivatives(u[:, i], x)
            for order in range(derivatives + 1):
                pair = d(*([dim] * order)).reshape(-1, 2)  # (n, 2): lower, upper
                terms.append(pair[:, 0] - pair[:, 1])
        return torch.stack(terms, dim=1)

    return Condition(name, sample, residual, group=2)


def initial(name: str, problem: Any, value: Value, *, order: int = 0,
            outputs: Sequence[int] | None = None) -> Condition:
    """``∂^order u / ∂t^order = value(x)`` at the initial time (the first slice of the last input)."""
    if problem.time_dim is None:
        raise ValueError(f"{problem.name} has no time input for an initial condition")
    cols, t = _outputs(problem, outputs), problem.time_dim

    def residual(x: Tensor, u: Tensor) -> Tensor:
        if order == 0:
            got = u[:, cols]
        else:
            got = torch.stack([Derivatives(u[:, i], x)(*([t] * order)) for i in cols], dim=1)
        return got - _columns(value(x.detach()), x.shape[0]).to(u.dtype)

    return Condition(name, problem._initial_points, residual)


def observations(name: str, problem: Any, count: int, *, noise: float = 0.0,
                 solution: Value | None = None, sample: Callable[[int, torch.Generator], Tensor] | None = None,
                 ) -> Condition:
    """``count`` measurements ``u(x_j) = y_j``: points drawn in the domain (or by ``sample``),
    values from ``solution`` (the exact one by default) plus Gaussian noise with standard
    deviation ``noise`` times the standard deviation of the clean values (Raissi et al. 2019)."""
    draw = sample or problem.sample_interior
    truth = solution or problem.exact

    def sample_rows(n: int, generator: torch.Generator) -> Tensor:
        x = draw(n, generator)
        with torch.no_grad():
            y = truth(x).reshape(n, problem.output_dim).to(torch.float64)
        if noise > 0 and n > 1:
            y = y + noise * y.std(dim=0) * torch.randn(y.shape, generator=generator, dtype=torch.float64)
        return torch.cat([x, y], dim=1)

    def residual(x: Tensor, u: Tensor, y: Tensor) -> Tensor:
        return u - y.to(u.dtype)

    return Condition(name, sample_rows, residual, data=problem.output_dim, points=count, noisy=noise > 0)
