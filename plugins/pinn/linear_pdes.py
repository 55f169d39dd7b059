"""Linear scalar benchmark PDEs with closed-form solutions.

Poisson and Helmholtz use manufactured solutions (the source term is derived
from the chosen solution); heat and wave use separation of variables, i.e.
sums of Fourier sine modes that individually solve the PDE and vanish on the
boundary.  Exact solutions are torch functions, so autograd can verify the
residual on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .derivatives import Derivatives
from .problem_base import Condition, Problem

__all__ = ["Poisson2D", "Heat1D", "Wave1D", "Helmholtz2D"]

PI = math.pi

# The residual of an exact solution in float64 is rounding noise, a few ulps
# of the largest term; tolerances are this factor times that term's size.
_ROUNDING_FACTOR = 1e-10


def _sine_series(
    x: Tensor, modes: Sequence[tuple[int, float]], temporal: Callable[[int], Tensor] | None = None
) -> Tensor:
    """``sum_n A_n sin(n pi x) T_n`` (N, 1) for ``x`` (N, 1); ``T_n = temporal(n)`` (N, 1), or 1 when omitted."""
    out = torch.zeros_like(x)
    for n, amplitude in modes:
        term = amplitude * torch.sin(n * PI * x)
        out = out + (term if temporal is None else term * temporal(n))
    return out


def _sine_modes(modes: Sequence[Sequence[float]], problem: str) -> tuple[tuple[int, float], ...]:
    """Validate ``((n, amplitude), ...)`` with integer wavenumbers n >= 1."""
    out = []
    for mode in modes:
        if len(mode) != 2:
            raise ValueError(f"{problem}: each mode is (wavenumber, amplitude); got {mode!r}")
        n, amplitude = mode
        if int(n) != n or int(n) < 1:
            raise ValueError(f"{problem}: wavenumbers must be integers >= 1 (zero boundary values); got {n!r}")
        out.append((int(n), float(amplitude)))
    if not out:
        raise ValueError(f"{problem}: need at least one mode")
    return tuple(out)


class Poisson2D(Problem):
    """Poisson equation with a manufactured multi-mode solution.

    PDE:      ``-(u_xx + u_yy) = f``
    Domain:   ``[0, 1]^2``; input order ``(x, y)``; output ``(u,)``.
    Exact:    ``u = sum_m A_m sin(a_m pi x) sin(b_m pi y)``, hence
              ``f = sum_m A_m (a_m^2 + b_m^2) pi^2 sin(a_m pi x) sin(b_m pi y)``.
    Boundary: Dirichlet ``u = exact`` (zero for integer frequencies).

    Args:
        modes: ``((a, b, amplitude), ...)``; the default is the classic single
            mode ``sin(pi x) sin(pi y)``.  Add e.g. ``(4, 4, 0.1)`` for a
            multi-scale variant.
    """

    name = "poisson2d"
    input_names = ("x", "y")
    output_names = ("u",)
    lower = (0.0, 0.0)
    upper = (1.0, 1.0)
    default_grid = (101, 101)

    def __init__(self, *, modes: Sequence[Sequence[float]] = ((1.0, 1.0, 1.0),)) -> None:
        parsed = []
        for mode in modes:
            if len(mode) != 3:
                raise ValueError(f"poisson2d: each mode is (a, b, amplitude); got {mode!r}")
            parsed.append(tuple(float(v) for v in mode))
        if not parsed:
            raise ValueError("poisson2d: need at least one mode")
        super().__init__(modes=tuple(parsed))
        self.modes: tuple[tuple[float, float, float], ...] = tuple(parsed)  # type: ignore[assignment]
        scale = sum(abs(amp) * (a * a + b * b) * PI**2 for a, b, amp in self.modes)
        self.residual_tolerance = _ROUNDING_FACTOR * (1.0 + scale)

    def _series(self, x: Tensor, weight_by_eigenvalue: bool) -> Tensor:
        """``sum_m A_m [(a^2 + b^2) pi^2] sin(a pi x) sin(b pi y)`` -> (N,)."""
        out = torch.zeros_like(x[:, 0])
        for a, b, amp in self.modes:
            coef = amp * (a * a + b * b) * PI**2 if weight_by_eigenvalue else amp
            out = out + coef * torch.sin(a * PI * x[:, 0]) * torch.sin(b * PI * x[:, 1])
        return out

    def source(self, x: Tensor) -> Tensor:
        """Right-hand side ``f`` (N,) at ``x`` (N, 2)."""
        return self._series(x, weight_by_eigenvalue=True)

    def exact(self, x: Tensor) -> Tensor:
        return self._series(x, weight_by_eigenvalue=False)[:, None]

    def residual(self, x: Tensor, u: Tensor) -> Tensor:
        """``-(u_xx + u_yy) - f`` -> (N, 1)."""
        u = self._outputs(x, u)
        lap = Derivatives(u, x).laplacian()
        return (-lap - self.source(x.detach()).to(u.dtype))[:, None]

    def conditions(self) -> list[Condition]:
        return [self._dirichlet_from_exact("boundary")]


class Heat1D(Problem):
    """Heat (diffusion) equation on the unit interval.

    PDE:      ``u_t = alpha u_xx``
    Domain:   ``x in [0, 1]``, ``t in [0, 1]``; input order ``(x, t)``; output ``(u,)``.
    Initial:  ``u(x, 0) = sum_n A_n sin(n pi x)``.
    Boundary: ``u(0, t) = u(1, t) = 0``.
    Exact:    ``u = sum_n A_n sin(n pi x) exp(-alpha n^2 pi^2 t)`` (separation of variables).

    Args:
        alpha: diffusivity (> 0).
        modes: ``((n, A_n), ...)`` with integer ``n >= 1``.
    """

    name = "heat1d"
    input_names = ("x", "t")
    output_names = ("u",)
    lower = (0.0, 0.0)
    upper = (1.0, 1.0)
    default_grid = (101, 101)

    def __init__(
        self, *, alpha: float = 0.1, modes: Sequence[Sequence[float]] = ((1, 1.0), (3, 0.5))
    ) -> None:
        if not alpha > 0:
            raise ValueError(f"heat1d: alpha must be positive; got {alpha}")
        parsed = _sine_modes(modes, "heat1d")
        super().__init__(alpha=float(alpha), modes=parsed)
        self.alpha = float(alpha)
        self.modes = parsed
        scale = sum(abs(amp) * self.alpha * (n * PI) ** 2 for n, amp in parsed)
        self.residual_tolerance = _ROUNDING_FACTOR * (1.0 + scale)

    def initial_value(self, x: Tensor) -> Tensor:
        """``u(x, 0)`` (N, 1) at points ``x`` (N, 2)."""
        return _sine_series(x[:, :1], self.modes)

    def exact(self, x: Tensor) -> Tensor:
        t = x[:, 1:]  # (N, 1)
        return _sine_series(x[:, :1], self.modes, lambda n: torch.exp(-self.alpha * (n * PI) ** 2 * t))

    def residual(self, x: Tensor, u: Tensor) -> Tensor:
        """``u_t - alpha u_xx`` -> (N, 1)."""
        d = Derivatives(self._outputs(x, u), x)
        return (d(1) - self.alpha * d(0, 0))[:, None]

    def conditions(self) -> list[Condition]:
        def initial(x: Tensor, u: Tensor) -> Tensor:
            return self._outputs(x, u) - self.initial_value(x.detach()).to(u.dtype)

        def boundary(x: Tensor, u: Tensor) -> Tensor:
            return self._outputs(x, u)

        return [
            Condition("initial", self._initial_points, initial),
            Condition("boundary", self._boundary_points, boundary),
        ]


class Wave1D(Problem):
    """Wave equation on the unit interval with standing-wave solution.

    PDE:      ``u_tt = c^2 u_xx``
    Domain:   ``x in [0, 1]``, ``t in [0, 1]``; input order ``(x, t)``; output ``(u,)``.
    Initial:  ``u(x, 0) = sum_n A_n sin(n pi x)`` and ``u_t(x, 0) = 0``.
    Boundary: ``u(0, t) = u(1, t) = 0``.
    Exact:    ``u = sum_n A_n sin(n pi x) cos(n pi c t)`` (d'Alembert: the
              average of the left- and right-travelling initial profile).
    The defaults (``c = 2``, modes ``sin(pi x) + 0.5 sin(4 pi x)``) are the
    common PINN wave benchmark.

    Args:
        c: wave speed (> 0).
        modes: ``((n, A_n), ...)`` with integer ``n >= 1``.
    """

    name = "wave1d"
    input_names = ("x", "t")
    output_names = ("u",)
    lower = (0.0, 0.0)
    upper = (1.0, 1.0)
    default_grid = (101, 101)

    def __init__(self, *, c: float = 2.0, modes: Sequence[Sequence[float]] = ((1, 1.0), (4, 0.5))) -> None:
        if not c > 0:
            raise ValueError(f"wave1d: c must be positive; got {c}")
        parsed = _sine_modes(modes, "wave1d")
        super().__init__(c=float(c), modes=parsed)
        self.c = float(c)
        self.modes = parsed
        scale = sum(abs(amp) * (n * PI * self.c) ** 2 for n, amp in parsed)
        self.residual_tolerance = _ROUNDING_FACTOR * (1.0 + scale)

    def initial_value(self, x: Tensor) -> Tensor:
        """``u(x, 0)`` (N, 1) at points ``x`` (N, 2)."""
        return _sine_series(x[:, :1], self.modes)

    def exact(self, x: Tensor) -> Tensor:
        t = x[:, 1:]  # (N, 1)
        return _sine_series(x[:, :1], self.modes, lambda n: torch.cos(n * PI * self.c * t))

    def residual(self, x: Tensor, u: Tensor) -> Tensor:
        """``u_tt - c^2 u_xx`` -> (N, 1)."""
        d = Derivatives(self._outputs(x, u), x)
        return (d(1, 1) - self.c**2 * d(0, 0))[:, None]

    def conditions(self) -> list[Condition]:
        def initial(x: Tensor, u: Tensor) -> Tensor:
            return self._outputs(x, u) - self.initial_value(x.detach()).to(u.dtype)

        def initial_velocity(x: Tensor, u: Tensor) -> Tensor:
            return Derivatives(self._outputs(x, u), x)(1)[:, None]  # u_t

        def boundary(x: Tensor, u: Tensor) -> Tensor:
            return self._outputs(x, u)

        return [
            Condition("initial", self._initial_points, initial),
            Condition("initial_velocity", self._initial_points, initial_velocity),
            Condition("boundary", self._boundary_points, boundary),
        ]


class Helmholtz2D(Problem):
    """Helmholtz equation with the standard manufactured solution.

    PDE:      ``u_xx + u_yy + k^2 u = q``
    Domain:   ``[-1, 1]^2``; input order ``(x, y)``; output ``(u,)``.
    Exact:    ``u = sin(a1 pi x) sin(a2 pi y)``, hence
              ``q = (k^2 - (a1^2 + a2^2) pi^2) sin(a1 pi x) sin(a2 pi y)``.
    Boundary: Dirichlet ``u = exact`` (zero for integer a1, a2).
    Defaults ``k = 1, a1 = 1, a2 = 4`` follow McClenny & Braga-Neto (2023).

    Args:
        k: wavenumber.
        a1, a2: frequencies of the solution along x and y.
    """

    name = "helmholtz2d"
    input_names = ("x", "y")
    output_names = ("u",)
    lower = (-1.0, -1.0)
    upper = (1.0, 1.0)
    default_grid = (101, 101)

    def __init__(self, *, k: float = 1.0, a1: float = 1.0, a2: float = 4.0) -> None:
        super().__init__(k=float(k), a1=float(a1), a2=float(a2))
        self.k, self.a1, self.a2 = float(k), float(a1), float(a2)
        scale = self.k**2 + (self.a1**2 + self.a2**2) * PI**2
        self.residual_tolerance = _ROUNDING_FACTOR * (1.0 + scale)

    def exact(self, x: Tensor) -> Tensor:
        return (torch.sin(self.a1 * PI * x[:, 0]) * torch.sin(self.a2 * PI * x[:, 1]))[:, None]

    def source(self, x: Tensor) -> Tensor:
        """Right-hand side ``q`` (N,) at ``x`` (N, 2)."""
        factor = self.k**2 - (self.a1**2 + self.a2**2) * PI**2
        return factor * torch.sin(self.a1 * PI * x[:, 0]) * torch.sin(self.a2 * PI * x[:, 1])

    def residual(self, x: Tensor, u: Tensor) -> Tensor:
        """``u_xx + u_yy + k^2 u - q`` -> (N, 1)."""
        u = self._outputs(x, u)
        lap = Derivatives(u, x).laplacian()
        return (lap + self.k**2 * u[:, 0] - self.source(x.detach()).to(u.dtype))[:, None]

    def conditions(self) -> list[Condition]:
        return [self._dirichlet_from_exact("boundary")]
