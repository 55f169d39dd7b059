"""The in-package reference solvers converge at their expected order and solve their PDE."""

from __future__ import annotations

import numpy as np
import torch

from phasetrain.plugins.pinn.allen_cahn_reference import AllenCahnReference
from phasetrain.plugins.pinn.problems import PROBLEMS

# A short horizon where the solution still moves fast (the interfaces form before t = 0.25).
HORIZON = dict(t_end=0.25, snapshots=10)
X = np.linspace(-1.0, 1.0, 129)


def _final(**kwargs) -> np.ndarray:
    ref = AllenCahnReference(**{**HORIZON, **kwargs})
    return ref(X, np.full_like(X, HORIZON["t_end"]))


def test_etdrk4_is_fourth_order_in_time():
    steps = [0.025 / 2, 0.025 / 4, 0.025 / 8, 0.025 / 64]
    u = [_final(modes=256, dt=dt) for dt in steps]
    errors = [np.abs(v - u[-1]).max() for v in u[:-1]]
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert errors[0] > 1e-9  # the coarsest step is visibly off, so the rates mean something
    assert (orders > 3.6).all(), (errors, orders)


def test_the_spectral_discretisation_converges_in_space():
    # The initial condition's periodic extension has a kink at x = +-1 (u' jumps by 4), so the
    # Fourier coefficients decay like m^-2 and the error in L2 like modes^-1.5, until the
    # reaction flattens the kink; doubling the modes must gain at least that.
    fine = _final(modes=2048, dt=0.025 / 8)
    errors = [np.linalg.norm(_final(modes=m, dt=0.025 / 8) - fine) for m in (128, 256, 512)]
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert (orders > 1.4).all(), (errors, orders)


def test_the_reference_solves_allen_cahn_by_finite_differences():
    problem = PROBLEMS["allen-cahn"]()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 2, generator=g, dtype=torch.float64) * torch.tensor([1.6, 0.8]) + torch.tensor([-0.8, 0.1])
    h, k = 1e-3, 1e-4
    u = problem.exact(x)[:, 0]

    def at(dx: float, dt: float) -> torch.Tensor:
        return problem.exact(x + torch.tensor([dx, dt], dtype=torch.float64))[:, 0]

    u_t = (at(0, k) - at(0, -k)) / (2 * k)
    u_xx = (at(h, 0) - 2 * u + at(-h, 0)) / h**2
    residual = u_t - 1e-4 * u_xx + 5 * u**3 - 5 * u
    assert float(residual.abs().max()) < 1e-3  # the finite differences' own error dominates
    # At t = 0 the Fourier series of the kinked initial condition, between grid points.
    torch.testing.assert_close(problem.exact(torch.tensor([[0.3, 0.0]], dtype=torch.float64))[0, 0],
                               torch.tensor(0.09 * np.cos(0.3 * np.pi), dtype=torch.float64), atol=1e-5, rtol=0)


def test_the_reference_is_periodic_and_reads_the_same_on_a_grid_and_point_by_point():
    ref = AllenCahnReference(**HORIZON)
    t = np.array([0.0, 0.013, 0.2, 0.25])
    np.testing.assert_allclose(ref(np.full(4, -1.0), t), ref(np.full(4, 1.0), t), atol=1e-12)
    xs, ts = np.meshgrid(np.linspace(-1, 1, 9), np.linspace(0, 0.25, 7), indexing="ij")
    on_grid = ref(xs, ts)
    one_by_one = np.array([ref(a[None], b[None])[0] for a, b in zip(xs.ravel(), ts.ravel(), strict=True)])
    np.testing.assert_allclose(on_grid, one_by_one, atol=1e-12)
