"""Viscous Burgers benchmark (Raissi et al., 2019)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .burgers_exact import burgers_cole_hopf, check_convergence
from .conditions import observations
from .derivatives import Derivatives
from .inverse import Unknown
from .problem_base import Condition, Problem

__all__ = ["Burgers1D", "BurgersInverse"]


class Burgers1D(Problem):
    """Viscous Burgers equation with a shock-like front.

    PDE:      ``u_t + u u_x - nu u_xx = 0``
    Domain:   ``x in [-1, 1]``, ``t in [0, 1]``; input order ``(x, t)``; output ``(u,)``.
    Initial:  ``u(x, 0) = -sin(pi x)``.
    Boundary: ``u(-1, t) = u(1, t) = 0``.
    Exact:    Cole–Hopf integral evaluated by Gauss–Hermite quadrature (see
              :mod:`.burgers_exact`); the front at ``x = 0`` reaches its
              steepest slope ``|u_x| ≈ 152.005`` at ``t = 1.6037 / pi`` for the
              default ``nu = 0.01 / pi``.

    Args:
        nu: viscosity (> 0).
        quadrature_nodes: Gauss–Hermite nodes of the exact solution.  The
            constructor checks that the rule has converged for ``nu``.
    """

    name = "burgers"
    input_names = ("x", "t")
    output_names = ("u",)
    lower = (-1.0, 0.0)
    upper = (1.0, 1.0)
    default_grid = (256, 100)  # the classic 256 x 100 reference grid

    def __init__(self, *, nu: float = 0.01 / math.pi, quadrature_nodes: int = 200) -> None:
        if not nu > 0:
            raise ValueError(f"nu must be positive; got {nu}")
        super().__init__(nu=float(nu), quadrature_nodes=int(quadrature_nodes))
        self.nu = float(nu)
        self.quadrature_nodes = int(quadrature_nodes)
        check_convergence(self.nu, self.quadrature_nodes, self.upper[1])
        # Observed max |residual| of the quadrature solution (autograd, float64)
        # is ~1e-13 for t > 1e-5 (terms reach ~150 at the front) and ~1e-10 for
        # t -> 0, where d sqrt(t)/dt amplifies rounding.
        self.residual_tolerance = 1e-8

    def residual(self, x: Tensor, u: Tensor) -> Tensor:
        """``u_t + u u_x - nu u_xx`` -> (N, 1)."""
        u = self._outputs(x, u)
        d = Derivatives(u, x)
        r = d(1) + u[:, 0] * d(0) - self.nu * d(0, 0)
        return r[:, None]

    def exact(self, x: Tensor) -> Tensor:
        """Cole–Hopf solution (N, 1) at ``x`` (N, 2) = (x, t); differentiable for t > 0."""
        u = burgers_cole_hopf(x[:, 0], x[:, 1], self.nu, self.quadrature_nodes)
        return u.to(dtype=x.dtype, device=x.device)[:, None]

    def initial_value(self, x: Tensor) -> Tensor:
        """``u(x, 0) = -sin(pi x)`` (N, 1) at points ``x`` (N, 2)."""
        return -torch.sin(math.pi * x[:, :1])

    hard_conditions = ("initial", "boundary")

    def hard_output(self, x: Tensor, raw: Tensor) -> Tensor:
        """``u = -sin(pi x) + t (1 - x^2) raw``: the initial and boundary values hold exactly."""
        xs, t = x[:, :1], x[:, 1:]
        return -torch.sin(math.pi * xs) + t * (1 - xs**2) * raw

    def conditions(self) -> list[Condition]:
        def initial(x: Tensor, u: Tensor) -> Tensor:
            return self._outputs(x, u) - self.initial_value(x.detach()).to(u.dtype)

        def boundary(x: Tensor, u: Tensor) -> Tensor:
            return self._outputs(x, u)  # homogeneous Dirichlet

        return [
            Condition("initial", self._initial_points, initial),
            Condition("boundary", self._boundary_points, boundary),
        ]


class BurgersInverse(Burgers1D):
    """Burgers with unknown coefficients, identified from observations (Raissi et al., 2019).

    PDE:      ``u_t + lambda1 u u_x - nu u_xx = 0`` with ``lambda1`` and ``nu`` unknown
    Data:     ``observations`` values of the exact solution (true ``lambda1 = 1``, ``nu`` as
              given) at points drawn in the domain, plus Gaussian noise of ``noise`` times their
              standard deviation; no initial or boundary condition is used.

    Args:
        nu: the true viscosity (of the data and the exact solution).
        observations: number of measured points.
        noise: relative noise level of the measurements (0.01 is 1 %).
        initial_lambda1, initial_nu: the starting guesses.
    """

    name = "burgers-inverse"

    def __init__(self, *, nu: float = 0.01 / math.pi, quadrature_nodes: int = 200, observations: int = 2000,
                 noise: float = 0.0, initial_lambda1: float = 0.0, initial_nu: float = 0.01) -> None:
        super().__init__(nu=nu, quadrature_nodes=quadrature_nodes)
        if not 0 <= noise < 1 or observations < 1 or not initial_nu > 0:
            raise ValueError(f"need 0 <= noise < 1, observations >= 1 and initial_nu > 0; got {noise}, "
                             f"{observations}, {initial_nu}")
        self.params.update(observations=observations, noise=noise, initial_lambda1=initial_lambda1,
                           initial_nu=initial_nu)
        self.observations, self.noise = int(observations), float(noise)
        self.unknowns = {
            "lambda1": Unknown(float(initial_lambda1), 1.0),
            "nu": Unknown(float(initial_nu), self.nu, positive=True),
        }

    hard_conditions = ()

    def residual(self, x: Tensor, u: Tensor) -> Tensor:
        """``u_t + lambda1 u u_x - nu u_xx`` -> (N, 1)."""
        u = self._outputs(x, u)
        d = Derivatives(u, x)
        r = d(1) + self.coefficient("lambda1") * u[:, 0] * d(0) - self.coefficient("nu") * d(0, 0)
        return r[:, None]

    def conditions(self) -> list[Condition]:
        return [observations("data", self, self.observations, noise=self.noise)]
