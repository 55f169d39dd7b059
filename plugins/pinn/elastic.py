"""Time-dependent 2-D linear elastodynamics (Navier–Cauchy) with a manufactured solution."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .derivatives import Derivatives
from .problem_base import Condition, Problem

__all__ = ["Elastic2D"]

PI = math.pi

# Manufactured displacement: a standing wave in each component,
#   u = A sin(a x) sin(b y) cos(omega t),   v = B sin(c x) sin(d y) cos(omega t).
# The two components have different spatial modes so that the coupling
# terms (lambda + mu) u_xy and v_xy are non-trivial.
_A, _a, _b = 1.0, PI, PI
_B, _c, _d = 0.5, 2.0 * PI, PI


class Elastic2D(Problem):
    """2-D elastic wave equation in displacement form with a body force.

    PDE (isotropic, homogeneous; displacement ``(u, v)``)::

        rho u_tt = (lam + mu) (u_xx + v_xy) + mu (u_xx + u_yy) + f1
        rho v_tt = (lam + mu) (u_xy + v_yy) + mu (v_xx + v_yy) + f2

    i.e. ``rho u_tt = (lam + mu) grad(div u) + mu lap u + f``.

    Domain:   ``[0, 1]^2 x [0, 1]``; input order ``(x, y, t)``; outputs ``(u, v)``.
    Exact:    ``u = sin(pi x) sin(pi y) cos(omega t)``,
              ``v = 0.5 sin(2 pi x) sin(pi y) cos(omega t)``;
              the body force ``f`` is derived from it analytically
              (see :meth:`body_force`).
    Initial:  displacement ``(u, v)(x, y, 0)`` from the exact solution and
              velocity ``(u_t, v_t)(x, y, 0) = 0``.
    Boundary: Dirichlet ``(u, v) = exact`` on the four sides (zero here).

    Args:
        lam, mu: Lamé parameters; ``mu > 0`` and ``lam + 2 mu > 0`` (positive
            shear and P-wave moduli) are required.
        rho: density (> 0).
        omega: angular frequency of the standing wave.
    """

    name = "elastic2d"
    input_names = ("x", "y", "t")
    output_names = ("u", "v")
    lower = (0.0, 0.0, 0.0)
    upper = (1.0, 1.0, 1.0)
    default_grid = (31, 31, 31)  # 29,791 points

    def __init__(self, *, lam: float = 1.0, mu: float = 0.5, rho: float = 1.0, omega: float = 2.0 * PI) -> None:
        if not (mu > 0 and lam + 2 * mu > 0 and rho > 0):
            raise ValueError(f"elastic2d: need mu > 0, lam + 2 mu > 0, rho > 0; got lam={lam}, mu={mu}, rho={rho}")
        super().__init__(lam=float(lam), mu=float(mu), rho=float(rho), omega=float(omega))
        self.lam, self.mu, self.rho, self.omega = float(lam), float(mu), float(rho), float(omega)
        wavenumber_sq = max(_a, _b, _c, _d) ** 2
        scale = self.rho * self.omega**2 + (2 * abs(self.lam) + 4 * self.mu) * wavenumber_sq
        self.residual_tolerance = 1e-10 * (1.0 + scale)

    # ------------------------------------------------------------ solution
    def exact(self, x: Tensor) -> Tensor:
        xs, ys, t = x[:, 0], x[:, 1], x[:, 2]
        time = torch.cos(self.omega * t)
        u = _A * torch.sin(_a * xs) * torch.sin(_b * ys) * time
        v = _B * torch.sin(_c * xs) * torch.sin(_d * ys) * time
        return torch.stack([u, v], dim=1)

    def body_force(self, x: Tensor) -> Tensor:
        """Body force ``f = (f1, f2)`` (N, 2) that makes :meth:`exact` solve the PDE.

        With ``T = cos(omega t)`` and the exact ``u``, ``v``::

            f1 = rho u_tt - (lam + 2 mu) u_xx - mu u_yy - (lam + mu) v_xy
               = [-rho omega^2 + (lam + 2 mu) a^2 + mu b^2] u - (lam + mu) B c d cos(c x) cos(d y) T
            f2 = rho v_tt - (lam + 2 mu) v_yy - mu v_xx - (lam + mu) u_xy
               = [-rho omega^2 + (lam + 2 mu) d^2 + mu c^2] v - (lam + mu) A a b cos(a x) cos(b y) T
        """
        lam, mu, rho, w2 = self.lam, self.mu, self.rho, self.omega**2
        xs, ys, t = x[:, 0], x[:, 1], x[:, 2]
        time = torch.cos(self.omega * t)
        exact = self.exact(x)
        u, v = exact[:, 0], exact[:, 1]
        v_xy = _B * _c * _d * torch.cos(_c * xs) * torch.cos(_d * ys) * time
        u_xy = _A * _a * _b * torch.cos(_a * xs) * torch.cos(_b * ys) * time
        f1 = (-rho * w2 + (lam + 2 * mu) * _a**2 + mu * _b**2) * u - (lam + mu) * v_xy
        f2 = (-rho * w2 + (lam + 2 * mu) * _d**2 + mu * _c**2) * v - (lam + mu) * u_xy
        return torch.stack([f1, f2], dim=1)

    # ------------------------------------------------------------ residual
    def residual(self, x: Tensor, u: Tensor) -> Tensor:
        """``rho u_tt - (lam + mu) grad(div u) - mu lap u - f`` -> (N, 2)."""
        out = self._outputs(x, u)
        du, dv = Derivatives(out[:, 0], x), Derivatives(out[:, 1], x)
        u_xx, u_xy, u_yy, u_tt = du(0, 0), du(0, 1), du(1, 1), du(2, 2)
        v_xx, v_xy, v_yy, v_tt = dv(0, 0), dv(0, 1), dv(1, 1), dv(2, 2)
        lam, mu, rho = self.lam, self.mu, self.rho
        f = self.body_force(x.detach()).to(out.dtype)
        r1 = rho * u_tt - (lam + mu) * (u_xx + v_xy) - mu * (u_xx + u_yy) - f[:, 0]
        r2 = rho * v_tt - (lam + mu) * (u_xy + v_yy) - mu * (v_xx + v_yy) - f[:, 1]
        return torch.stack([r1, r2], dim=1)

    # ---------------------------------------------------------- conditions
    def initial_value(self, x: Tensor) -> Tensor:
        """Initial displacement (N, 2) at points ``x`` (N, 3) (the ``t`` column is ignored)."""
        xs, ys = x[:, 0], x[:, 1]
        u0 = _A * torch.sin(_a * xs) * torch.sin(_b * ys)
        v0 = _B * torch.sin(_c * xs) * torch.sin(_d * ys)
        return torch.stack([u0, v0], dim=1)

    def conditions(self) -> list[Condition]:
        def initial(x: Tensor, u: Tensor) -> Tensor:
            return self._outputs(x, u) - self.initial_value(x.detach()).to(u.dtype)

        def initial_velocity(x: Tensor, u: Tensor) -> Tensor:
            out = self._outputs(x, u)
            return torch.stack([Derivatives(out[:, i], x)(2) for i in range(2)], dim=1)  # (u_t, v_t)

        return [
            Condition("initial", self._initial_points, initial),
            Condition("initial_velocity", self._initial_points, initial_velocity),
            self._dirichlet_from_exact("boundary"),
        ]
