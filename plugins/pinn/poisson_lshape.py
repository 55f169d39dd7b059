"""Poisson's equation on the L-shaped domain, with Dirichlet and Neumann pieces of boundary."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .conditions import dirichlet, neumann
from .derivatives import Derivatives
from .geometry import l_shape
from .problem_base import Condition, Problem

__all__ = ["PoissonLShape"]

PI = math.pi


def _reentrant(x: Tensor) -> Tensor:
    """The two edges that meet at the re-entrant corner: the boundary points with x, y >= 0."""
    return (x[:, 0] >= -1e-12) & (x[:, 1] >= -1e-12)


class PoissonLShape(Problem):
    """Poisson's equation with a manufactured solution on ``[-1, 1]^2 \\ (0, 1]^2``.

    PDE:      ``-(u_xx + u_yy) = f``
    Domain:   the L-shape (a :class:`~.geometry.Polygon`); input order ``(x, y)``; output ``(u,)``.
    Exact:    ``u = sin(pi x) sin(pi y) + a (x^2 - y^2)`` (the second part is harmonic), hence
              ``f = 2 pi^2 sin(pi x) sin(pi y)``.
    Boundary: Dirichlet ``u = exact`` on the outer edges (``boundary``) and Neumann
              ``du/dn = grad(exact) . n`` on the two re-entrant edges (``flux``), with the outward
              normals of the geometry.

    Args:
        a: weight of the harmonic part (non-zero boundary values).
    """

    name = "poisson-lshape"
    input_names = ("x", "y")
    output_names = ("u",)
    lower = (-1.0, -1.0)
    upper = (1.0, 1.0)
    default_grid = (101, 101)  # the 7,651 points of the 101 x 101 grid that lie in the L
    geometry = l_shape()

    def __init__(self, *, a: float = 0.5) -> None:
        super().__init__(a=float(a))
        self.a = float(a)
        self.residual_tolerance = 1e-10 * (1.0 + 2 * PI**2)

    def exact(self, x: Tensor) -> Tensor:
        xs, ys = x[:, 0], x[:, 1]
        return (torch.sin(PI * xs) * torch.sin(PI * ys) + self.a * (xs**2 - ys**2))[:, None]

    def gradient(self, x: Tensor) -> Tensor:
        """``grad(exact)`` (N, 2)."""
        xs, ys = x[:, 0], x[:, 1]
        ux = PI * torch.cos(PI * xs) * torch.sin(PI * ys) + 2 * self.a * xs
        uy = PI * torch.sin(PI * xs) * torch.cos(PI * ys) - 2 * self.a * ys
        return torch.stack([ux, uy], dim=1)

    def source(self, x: Tensor) -> Tensor:
        return 2 * PI**2 * torch.sin(PI * x[:, 0]) * torch.sin(PI * x[:, 1])

    def residual(self, x: Tensor, u: Tensor) -> Tensor:
        """``-(u_xx + u_yy) - f`` -> (N, 1)."""
        u = self._outputs(x, u)
        return (-Derivatives(u, x).laplacian() - self.source(x.detach()).to(u.dtype))[:, None]

    def conditions(self) -> list[Condition]:
        # On the re-entrant edges the outward normal is (1, 0) on x = 0 and (0, 1) on y = 0.
        def flux(x: Tensor) -> Tensor:
            grad = self.gradient(x)
            return torch.where(x[:, 0].abs() <= x[:, 1].abs(), grad[:, 0], grad[:, 1])[:, None]

        return [
            dirichlet("boundary", self, self.exact, where=lambda x: ~_reentrant(x)),
            neumann("flux", self, flux, where=_reentrant),
        ]
