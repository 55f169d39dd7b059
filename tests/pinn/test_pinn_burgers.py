"""The Burgers exact solution (Cole–Hopf + Gauss–Hermite) against independent checks."""

from __future__ import annotations

import functools
import math
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phasetrain.plugins.pinn.burgers_exact import MAX_NODES, burgers_cole_hopf
from phasetrain.plugins.pinn.problems import PROBLEMS, test_grid

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NU = 0.01 / math.pi
PEAK_TIME = 1.6037 / math.pi  # Basdevant et al. (1986): steepest front
PEAK_SLOPE = 152.00516


@functools.cache
def default_burgers():
    return PROBLEMS["burgers"]()


@pytest.fixture
def burgers():
    return default_burgers()


def trapezoid_reference(x: np.ndarray, t: np.ndarray, nu: float = NU, m: int = 40001) -> np.ndarray:
    """Independent evaluation of the Cole–Hopf integrals: trapezoid rule directly in η.

    u = -∫ sin(π(x-η)) f(x-η) G(η) dη / ∫ f(x-η) G(η) dη with G = exp(-η²/4νt),
    f(y) = exp(-cos(πy)/(2πν)); the Gaussian is cut at 12 standard widths.
    """
    out = np.empty_like(x)
    for i, (xi, ti) in enumerate(zip(x, t)):
        half = 12.0 * math.sqrt(4 * nu * ti)
        eta = np.linspace(-half, half, m)
        log_integrand = -(eta**2) / (4 * nu * ti) - np.cos(np.pi * (xi - eta)) / (2 * np.pi * nu)
        weight = np.exp(log_integrand - log_integrand.max())
        weight[[0, -1]] *= 0.5
        out[i] = -np.sum(np.sin(np.pi * (xi - eta)) * weight) / np.sum(weight)
    return out


def u_of(burgers, x, t) -> torch.Tensor:
    x, t = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(t, dtype=torch.float64)
    pts = torch.stack(torch.broadcast_tensors(x, t), dim=-1)
    return burgers.exact(pts.reshape(-1, 2))[:, 0]


def test_matches_independent_quadrature(burgers):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-1, 1, 30), rng.uniform(-0.02, 0.02, 20), [0.0, 1e-3, -1e-3]])
    t = np.concatenate([rng.uniform(1e-4, 1.0, 50), [PEAK_TIME] * 3])
    reference = trapezoid_reference(x, t)
    ours = u_of(burgers, torch.from_numpy(x), torch.from_numpy(t)).numpy()
    assert np.max(np.abs(ours - reference)) < 1e-10


def test_initial_condition_is_exact(burgers):
    x = torch.linspace(-1, 1, 101, dtype=torch.float64)
    assert torch.allclose(u_of(burgers, x, 0.0), -torch.sin(math.pi * x), atol=1e-15)
    # Continuity into t > 0 (the quadrature branch).
    assert torch.allclose(u_of(burgers, x, 1e-9), -torch.sin(math.pi * x), atol=1e-6)


def test_boundary_values_vanish(burgers):
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    for side in (-1.0, 1.0):
        assert float(u_of(burgers, side, t).abs().max()) < 1e-12


@SETTINGS
@given(x=st.floats(-1, 1), t=st.floats(0, 1))
def test_odd_symmetry(x, t):
    """-sin(pi x) is odd, and Burgers preserves oddness: u(-x, t) = -u(x, t)."""
    problem = default_burgers()
    assert abs(float(u_of(problem, x, t) + u_of(problem, -x, t))) < 1e-12


def test_peak_slope(burgers, fd):
    # Autograd through the quadrature.
    pt = torch.tensor([[0.0, PEAK_TIME]], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(burgers.exact(pt).sum(), pt)
    slope = abs(float(grad[0, 0]))
    assert slope == pytest.approx(PEAK_SLOPE, rel=1e-3)
    # Finite differences on the plain evaluation agree.
    fd_slope = abs(float(fd(burgers.exact, pt, [0], h=1e-6)[0, 0]))
    assert fd_slope == pytest.approx(slope, rel=1e-5)
    # It is a maximum in time: the front is less steep a little earlier or later.
    for dt in (-0.02, 0.02):
        other = torch.tensor([[0.0, PEAK_TIME + dt]], dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(burgers.exact(other).sum(), other)
        assert abs(float(g[0, 0])) < slope


def test_pde_by_finite_differences_away_from_front(burgers, fd):
    g = torch.Generator().manual_seed(5)
    n = 200
    r = torch.rand(n, 2, generator=g, dtype=torch.float64)
    sign = torch.where(r[:, 0] < 0.5, -1.0, 1.0).to(torch.float64)
    x = torch.stack([sign * (0.2 + 0.75 * torch.rand(n, generator=g, dtype=torch.float64)), 0.05 + 0.95 * r[:, 1]], 1)
    u = burgers.exact(x)[:, 0]
    u_x, u_t, u_xx = (fd(burgers.exact, x, dims, h=1e-4)[:, 0] for dims in ([0], [1], [0, 0]))
    residual = u_t + u * u_x - NU * u_xx
    assert float(residual.abs().max()) < 1e-5
    # The same check detects a wrong viscosity.
    assert float((u_t + u * u_x - 2 * NU * u_xx).abs().max()) > 1e-3


def test_autograd_is_finite_at_t_zero(burgers):
    x = torch.tensor([[0.3, 0.0], [-0.5, 0.0], [0.2, 0.5]], dtype=torch.float64, requires_grad=True)
    r = burgers.residual(x, burgers.exact(x))
    assert bool(torch.isfinite(r).all())


def test_grid_evaluation_is_fast(burgers):
    grid = test_grid(burgers)  # 256 x 100
    start = time.perf_counter()
    u = burgers.exact(grid)
    elapsed = time.perf_counter() - start
    assert u.shape == (25_600, 1) and bool(torch.isfinite(u).all())
    assert float(u.abs().max()) <= 1.0 + 1e-12  # maximum principle
    assert elapsed < 3.0


def test_unresolvable_parameters_are_rejected():
    with pytest.raises(ValueError, match="not converged"):
        PROBLEMS["burgers"](nu=0.001 / math.pi)  # needs more nodes than hermgauss provides
    with pytest.raises(ValueError):
        PROBLEMS["burgers"](quadrature_nodes=MAX_NODES + 100)
    with pytest.raises(ValueError):
        burgers_cole_hopf(torch.zeros(2), torch.tensor([0.1, -0.1]), NU)
