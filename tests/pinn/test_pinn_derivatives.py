"""Autograd derivative helpers against analytic derivatives of known functions."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phasetrain.plugins.pinn import derivatives
from phasetrain.plugins.pinn.derivatives import Derivatives, divergence, gradient, laplacian, partial

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

coef = st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False)


def points(d: int, max_size: int = 16):
    """Hypothesis strategy for (N, d) float64 points in [-2, 2]^d."""
    row = st.lists(st.floats(-2.0, 2.0, allow_nan=False, allow_infinity=False), min_size=d, max_size=d)
    return st.lists(row, min_size=1, max_size=max_size).map(
        lambda rows: torch.tensor(rows, dtype=torch.float64).requires_grad_()
    )


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> bool:
    return torch.allclose(a, b, rtol=tol, atol=tol)


# --------------------------------------------------- sin(a x) exp(b t), 2-D
@SETTINGS
@given(x=points(2), a=coef, b=coef)
def test_trig_exp_partials(x, a, b):
    xs, t = x[:, 0], x[:, 1]
    u = torch.sin(a * xs) * torch.exp(b * t)  # (N,)
    s, c, e = torch.sin(a * xs).detach(), torch.cos(a * xs).detach(), torch.exp(b * t).detach()
    expected = {
        (0,): a * c * e,
        (1,): b * s * e,
        (0, 0): -(a**2) * s * e,
        (1, 1): b**2 * s * e,
        (0, 1): a * b * c * e,
        (1, 0): a * b * c * e,
        (0, 0, 1): -(a**2) * b * s * e,
        (0, 0, 0): -(a**3) * c * e,
    }
    for dims, want in expected.items():
        assert close(partial(u, x, *dims), want), dims
    assert close(gradient(u, x), torch.stack([a * c * e, b * s * e], dim=1))
    # (N, 1) outputs are accepted too.
    assert close(partial(u[:, None], x, 0, 0), expected[(0, 0)])


# ------------------------------------------------- cubic polynomials, 3-D
EXPONENTS = [e for e in itertools.product(range(4), repeat=3) if sum(e) <= 3]


def poly_eval(poly: dict[tuple[int, ...], float], x: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(x[:, 0])
    for exps, c in poly.items():
        term = torch.full_like(x[:, 0], c)
        for k, e in enumerate(exps):
            term = term * x[:, k] ** e
        out = out + term
    return out


def poly_diff(poly: dict[tuple[int, ...], float], k: int) -> dict[tuple[int, ...], float]:
    """Exact derivative of a polynomial (exponent tuple -> coefficient) along variable k."""
    out: dict[tuple[int, ...], float] = {}
    for exps, c in poly.items():
        if exps[k] > 0:
            new = list(exps)
            new[k] -= 1
            out[tuple(new)] = out.get(tuple(new), 0.0) + c * exps[k]
    return out


@SETTINGS
@given(
    x=points(3),
    coefficients=st.lists(coef, min_size=len(EXPONENTS), max_size=len(EXPONENTS)),
    dims=st.lists(st.integers(0, 2), min_size=0, max_size=4),
)
def test_polynomial_partials(x, coefficients, dims):
    poly = dict(zip(EXPONENTS, coefficients))
    u = poly_eval(poly, x)
    want = poly
    for k in dims:
        want = poly_diff(want, k)
    expected = poly_eval(want, x.detach())
    assert close(partial(u, x, *dims), expected, tol=1e-9)


# --------------------------------------------------------- laplacian
@SETTINGS
@given(
    d=st.integers(1, 3),
    data=st.data(),
)
def test_laplacian_of_plane_wave(d, data):
    """u = sin(k . x) exp(b) has u_ii = -k_i^2 u, so the Laplacian over S is -sum_{i in S} k_i^2 u."""
    x = data.draw(points(d))
    k = torch.tensor(data.draw(st.lists(coef, min_size=d, max_size=d)), dtype=torch.float64)
    subset = data.draw(st.lists(st.integers(0, d - 1), unique=True, max_size=d))
    u = torch.sin(x @ k)
    s = torch.sin(x.detach() @ k)
    assert close(laplacian(u, x), -(k**2).sum() * s)
    assert close(laplacian(u, x, dims=subset), -(k[subset] ** 2).sum() * s)


def test_laplacian_of_radial_quadratic():
    """|x|^2 in d dimensions has Laplacian 2 d."""
    x = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    u = (x**2).sum(dim=1, keepdim=True)
    assert close(laplacian(u, x), torch.full((10,), 8.0, dtype=torch.float64))
    assert close(laplacian(u, x, dims=[0, 3]), torch.full((10,), 4.0, dtype=torch.float64))


# -------------------------------------------------------- divergence
@SETTINGS
@given(x=points(3), a=coef, b=coef)
def test_divergence(x, a, b):
    """v = (sin(a x) y, x^2 t, exp(b y) z) over inputs (x, y, z)."""
    xs, ys, zs = x[:, 0], x[:, 1], x[:, 2]
    v = torch.stack([torch.sin(a * xs) * ys, xs**2 * zs, torch.exp(b * ys) * zs], dim=1)
    X, Y, Z = (c.detach() for c in (xs, ys, zs))
    d_v0_dx = a * torch.cos(a * X) * Y
    d_v1_dy = torch.zeros_like(X)
    d_v2_dz = torch.exp(b * Y)
    assert close(divergence(v, x), d_v0_dx + d_v1_dy + d_v2_dz)
    # Custom pairing: component i differentiated along dims[i].
    d_v0_dy = torch.sin(a * X)
    d_v1_dx = 2 * X * Z
    d_v2_dy = b * torch.exp(b * Y) * Z
    assert close(divergence(v, x, dims=[1, 0, 1]), d_v0_dy + d_v1_dx + d_v2_dy)
    # Fewer components than inputs: the 2-D displacement (u, v) over (x, y, t).
    assert close(divergence(v[:, :2], x), d_v0_dx + d_v1_dy)


# ----------------------------------------------------- behaviour / API
def test_derivatives_are_differentiable_wrt_parameters():
    """create_graph=True: a loss on u_x back-propagates to the parameters."""
    w = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    x = torch.linspace(0.1, 0.9, 7, dtype=torch.float64)[:, None].requires_grad_()
    u = w * torch.sin(3 * x)  # (N, 1); u_xx = -9 w sin(3x)
    loss = partial(u, x, 0, 0).sum()
    (dw,) = torch.autograd.grad(loss, w)
    assert math.isclose(float(dw), float(-9 * torch.sin(3 * x.detach()).sum()), rel_tol=1e-12)


def test_shared_cache_reuses_reverse_passes(monkeypatch):
    calls = []
    original = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(derivatives.torch.autograd, "grad", counting_grad)
    x = torch.rand(5, 2, dtype=torch.float64, requires_grad=True)
    u = torch.sin(x[:, 0]) * torch.cos(x[:, 1])
    d = Derivatives(u, x)
    u_x, u_t, u_xx, u_xt, u_tx = d(0), d(1), d(0, 0), d(0, 1), d(1, 0)
    assert len(calls) == 2  # grad u, then grad u_x
    assert close(u_xt, u_tx)
    assert close(u_xx, -torch.sin(x[:, 0]) * torch.cos(x[:, 1]))
    d(1, 1)
    assert len(calls) == 3
    # The one-shot helper cannot share: partial(u, x, 0, 0) costs two passes.
    calls.clear()
    partial(u, x, 0, 0)
    assert len(calls) == 2


def test_fields_independent_of_x_have_zero_derivatives():
    x = torch.rand(4, 2, dtype=torch.float64, requires_grad=True)
    linear = 3.0 * x[:, 0] - x[:, 1]
    assert close(partial(linear, x, 0, 0), torch.zeros(4, dtype=torch.float64))
    assert close(laplacian(linear, x), torch.zeros(4, dtype=torch.float64))
    constant = torch.ones(4, dtype=torch.float64, requires_grad=True)  # has a graph, but not from x
    assert close(gradient(constant, x), torch.zeros(4, 2, dtype=torch.float64))
    assert partial(linear, x).shape == (4,)  # no dims: u itself


def test_input_validation():
    x = torch.rand(4, 2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="require grad"):
        gradient(x.detach()[:, 0], x.detach())
    with pytest.raises(ValueError, match="shape"):
        gradient(x * 2, x)  # (N, 2) is not a scalar field
    with pytest.raises(ValueError, match="shape"):
        gradient(x[:3, 0], x)  # wrong N
    with pytest.raises(IndexError):
        partial(x[:, 0], x, 2)
    with pytest.raises(ValueError, match="dims"):
        divergence(x, x, dims=[0])


def test_missing_graph_is_an_error_not_zeros():
    """Under no_grad second derivatives would silently vanish; the helpers refuse instead."""
    x = torch.rand(4, 2, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        u_no_graph = torch.sin(x[:, 0])
    with pytest.raises(ValueError, match="no_grad"):
        partial(u_no_graph, x, 0)
    u = torch.sin(x[:, 0])
    with torch.no_grad(), pytest.raises(RuntimeError, match="enable_grad"):
        partial(u, x, 0, 0)
    with torch.no_grad(), torch.enable_grad():
        assert close(partial(u, x, 0, 0), -torch.sin(x[:, 0].detach()))
