"""Reference solution of the Allen–Cahn benchmark by a Fourier spectral method with ETDRK4.

    u_t = eps u_xx + 5 u - 5 u^3,   x in [-1, 1] periodic,   u(x, 0) = x^2 cos(pi x)

In Fourier space ``v = rfft(u)`` the equation splits into a stiff linear part ``L v`` with
``L = 5 - eps k^2`` (``k = pi m`` on a period of length 2) and the nonlinearity
``N(v) = rfft(-5 u^3)``. Exponential time differencing with the fourth-order Runge–Kutta scheme
of Cox & Matthews, with the coefficients evaluated by contour integrals as in Kassam &
Trefethen (2005, "Fourth-order time-stepping for stiff PDEs"), integrates the linear part exactly
and is fourth order in the step ``dt`` (the convergence test in tests/pinn checks the order).

The solution is kept at ``snapshots + 1`` equally spaced times as Fourier coefficients, with their
time derivatives ``L v + N(v)``; between snapshots it is interpolated by cubic Hermite polynomials
in time (fourth order in the snapshot spacing) and evaluated at any ``x`` from its Fourier
series, so the reference can be read on any grid. Plain numpy; a solve with the defaults takes
about a second and is cached per parameter set.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["AllenCahnReference", "etdrk4_coefficients"]


def etdrk4_coefficients(lin: np.ndarray, dt: float, contour: int = 32) -> tuple[np.ndarray, ...]:
    """``E, E2, Q, f1, f2, f3`` of ETDRK4 for the diagonal linear operator ``lin`` (Kassam &
    Trefethen's contour-integral evaluation, free of the cancellation in the plain formulas)."""
    e, e2 = np.exp(dt * lin), np.exp(dt * lin / 2)
    r = np.exp(1j * np.pi * (np.arange(1, contour + 1) - 0.5) / contour)
    lr = dt * lin[:, None] + r[None, :]
    q = dt * np.real(np.mean((np.exp(lr / 2) - 1) / lr, axis=1))
    f1 = dt * np.real(np.mean((-4 - lr + np.exp(lr) * (4 - 3 * lr + lr**2)) / lr**3, axis=1))
    f2 = dt * np.real(np.mean((2 + lr + np.exp(lr) * (lr - 2)) / lr**3, axis=1))
    f3 = dt * np.real(np.mean((-4 - 3 * lr - lr**2 + np.exp(lr) * (4 - lr)) / lr**3, axis=1))
    return e, e2, q, f1, f2, f3


class AllenCahnReference:
    """The Allen–Cahn solution on ``t in [0, t_end]`` (see the module docstring).

    Args:
        eps: diffusion coefficient (1e-4 in the benchmark).
        modes: grid points (an even number) of the spectral discretisation.
        dt: ETDRK4 time step; ``t_end / snapshots`` must be a whole multiple of it.
        snapshots: stored time intervals.
        t_end: final time.
    """

    def __init__(self, eps: float = 1e-4, modes: int = 1024, dt: float = 1.25e-3, snapshots: int = 400,
                 t_end: float = 1.0) -> None:
        if modes % 2 or modes < 8:
            raise ValueError(f"modes must be an even number >= 8; got {modes}")
        per = (t_end / snapshots) / dt
        if abs(per - round(per)) > 1e-9 or round(per) < 1:
            raise ValueError(f"t_end / snapshots ({t_end / snapshots}) must be a whole multiple of dt ({dt})")
        self.eps, self.modes, self.dt, self.snapshots, self.t_end = eps, modes, dt, snapshots, t_end
        self.x = -1.0 + 2.0 * np.arange(modes) / modes  # the spectral grid on [-1, 1)
        self.k = np.pi * np.arange(modes // 2 + 1)  # wavenumbers of rfft
        self.lin = 5.0 - eps * self.k**2
        self.coefficients, self.rates = self._solve(int(round(per)))  # (S + 1, modes // 2 + 1) each

    def _nonlinear(self, v: np.ndarray) -> np.ndarray:
        u = np.fft.irfft(v, n=self.modes)
        return np.fft.rfft(-5.0 * u**3)

    def initial(self, x: np.ndarray) -> np.ndarray:
        return x**2 * np.cos(np.pi * x)

    def _solve(self, per: int) -> tuple[np.ndarray, np.ndarray]:
        e, e2, q, f1, f2, f3 = etdrk4_coefficients(self.lin, self.dt)
        v = np.fft.rfft(self.initial(self.x))
        coefficients, rates = [v], [self.lin * v + self._nonlinear(v)]
        for _ in range(self.snapshots):
            for _ in range(per):
                nv = self._nonlinear(v)
                a = e2 * v + q * nv
                na = self._nonlinear(a)
                b = e2 * v + q * na
                nb = self._nonlinear(b)
                c = e2 * a + q * (2 * nb - nv)
                nc = self._nonlinear(c)
                v = e * v + nv * f1 + 2 * (na + nb) * f2 + nc * f3
            coefficients.append(v)
            rates.append(self.lin * v + self._nonlinear(v))
        return np.array(coefficients), np.array(rates)

    def on_grid(self, snapshot: int) -> np.ndarray:
        """The solution (modes,) on the spectral grid at snapshot ``snapshot``."""
        return np.fft.irfft(self.coefficients[snapshot], n=self.modes)

    def _at_times(self, t: np.ndarray) -> np.ndarray:
        """Fourier coefficients (n, modes // 2 + 1) at times ``t`` (n,), Hermite-interpolated."""
        span = self.t_end / self.snapshots
        t = np.clip(t, 0.0, self.t_end)
        k = np.minimum((t / span).astype(np.int64), self.snapshots - 1)
        s = ((t - k * span) / span)[:, None]  # position in the interval, [0, 1]
        h00, h10 = 2 * s**3 - 3 * s**2 + 1, (s**3 - 2 * s**2 + s) * span
        h01, h11 = -2 * s**3 + 3 * s**2, (s**3 - s**2) * span
        return (h00 * self.coefficients[k] + h10 * self.rates[k]
                + h01 * self.coefficients[k + 1] + h11 * self.rates[k + 1])

    def _basis(self, x: np.ndarray) -> np.ndarray:
        """(n, modes // 2 + 1): ``w_m e^{i k_m (x + 1)} / modes`` (the grid starts at -1; the
        modes other than 0 and Nyquist stand for their conjugates too)."""
        weights = np.full(self.k.shape[0], 2.0)
        weights[0] = weights[-1] = 1.0
        return weights * np.exp(1j * np.outer(x + 1.0, self.k)) / self.modes

    def __call__(self, x: np.ndarray, t: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """u at points ``(x, t)`` (N,) each, float64."""
        x, t = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(t, np.float64))
        x, t = x.reshape(-1), t.reshape(-1)
        times, t_index = np.unique(t, return_inverse=True)
        places, x_index = np.unique(x, return_inverse=True)
        if times.size * places.size <= 4 * x.size:  # a grid: every time with every place, at once
            table = np.real(self._at_times(times) @ self._basis(places).T)  # (times, places)
            return table[t_index, x_index]
        out = np.empty(x.shape[0])
        for start in range(0, x.shape[0], chunk):
            part = slice(start, start + chunk)
            out[part] = np.real((self._at_times(t[part]) * self._basis(x[part])).sum(axis=1))
        return out


@functools.lru_cache(maxsize=4)
def reference(eps: float, modes: int = 1024, dt: float = 1.25e-3, snapshots: int = 400) -> AllenCahnReference:
    """The reference for ``eps``, solved once per process."""
    return AllenCahnReference(eps, modes, dt, snapshots)
