"""Conformance tests for the PDE problems: exact solutions, residuals, conditions, grids."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phasetrain.plugins.pinn import problems as P

SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAMES = ["burgers", "poisson2d", "heat1d", "wave1d", "elastic2d", "helmholtz2d"]
#: Problems with their own tests (tests/pinn/test_pinn_new_problems.py).
NEW = ["burgers-inverse", "allen-cahn", "poisson-lshape"]
PI = math.pi


def interior(problem: P.Problem, n: int, seed: int = 0) -> torch.Tensor:
    """Random interior points (n, d) float64, kept slightly away from the boundary."""
    g = torch.Generator().manual_seed(seed)
    lo = torch.tensor(problem.lower, dtype=torch.float64)
    hi = torch.tensor(problem.upper, dtype=torch.float64)
    pad = 0.01 * (hi - lo)
    return lo + pad + (hi - lo - 2 * pad) * torch.rand(n, len(lo), generator=g, dtype=torch.float64)


def max_abs(t: torch.Tensor) -> float:
    return float(t.detach().abs().max())


# ------------------------------------------------------------ registry
def test_registry_and_metadata():
    assert sorted(P.PROBLEMS) == sorted(NAMES + NEW)
    for name, cls in P.PROBLEMS.items():
        problem = cls()
        assert problem.name == name
        d = len(problem.input_names)
        assert len(problem.lower) == len(problem.upper) == d == problem.input_dim
        assert all(lo < hi for lo, hi in zip(problem.lower, problem.upper))
        assert problem.output_dim == len(problem.output_names) >= 1
        assert problem.residual_tolerance > 0
        assert len({c.name for c in problem.conditions()}) == len(problem.conditions()) >= 1
        assert name in repr(problem) or type(problem).__name__ in repr(problem)


def test_spec_domains_and_orders():
    """Input orders, domains and outputs stated in the specification."""
    spec = {
        "burgers": (("x", "t"), (-1.0, 0.0), (1.0, 1.0), ("u",)),
        "heat1d": (("x", "t"), (0.0, 0.0), (1.0, 1.0), ("u",)),
        "wave1d": (("x", "t"), (0.0, 0.0), (1.0, 1.0), ("u",)),
        "elastic2d": (("x", "y", "t"), None, None, ("u", "v")),
        "helmholtz2d": (("x", "y"), (-1.0, -1.0), (1.0, 1.0), ("u",)),
        "poisson2d": (("x", "y"), None, None, ("u",)),
    }
    for name, (inputs, lower, upper, outputs) in spec.items():
        cls = P.PROBLEMS[name]
        assert cls.input_names == inputs and cls.output_names == outputs
        if lower is not None:
            assert cls.lower == lower and cls.upper == upper
    assert math.isclose(P.PROBLEMS["burgers"]().nu, 0.01 / PI)


# --------------------------------------------- exact solutions solve PDE
sine_modes = st.lists(st.tuples(st.integers(1, 5), st.floats(-2, 2)), min_size=1, max_size=3)
PARAMS = {
    "burgers": st.fixed_dictionaries({"nu": st.floats(0.005 / PI, 0.1 / PI)}),
    "poisson2d": st.fixed_dictionaries(
        {"modes": st.lists(st.tuples(st.floats(0.5, 4), st.floats(0.5, 4), st.floats(-2, 2)), min_size=1, max_size=3)}
    ),
    "heat1d": st.fixed_dictionaries({"alpha": st.floats(0.01, 1.0), "modes": sine_modes}),
    "wave1d": st.fixed_dictionaries({"c": st.floats(0.5, 3.0), "modes": sine_modes}),
    "elastic2d": st.fixed_dictionaries(
        {
            "lam": st.floats(0.1, 3.0),
            "mu": st.floats(0.1, 2.0),
            "rho": st.floats(0.5, 2.0),
            "omega": st.floats(0.5, 10.0),
        }
    ),
    "helmholtz2d": st.fixed_dictionaries(
        {"k": st.floats(0.0, 5.0), "a1": st.floats(0.5, 5.0), "a2": st.floats(0.5, 5.0)}
    ),
}


def check_exact_solves_pde(problem: P.Problem, n: int = 256) -> None:
    x = interior(problem, n).requires_grad_()
    u = problem.exact(x)
    assert u.shape == (n, problem.output_dim) and u.dtype == torch.float64
    r = problem.residual(x, u)
    assert r.dim() == 2 and r.shape[0] == n
    assert max_abs(r) <= problem.residual_tolerance, (problem, max_abs(r))
    # Non-vacuity: a smooth perturbation of the solution does not solve the PDE.
    bump = 0.05 * torch.sin(1.3 * x.sum(dim=1, keepdim=True) + 0.4) * (1 + x[:, :1] ** 2)
    r_bad = problem.residual(x, problem.exact(x) + bump)
    assert max_abs(r_bad) > 1e3 * problem.residual_tolerance


@pytest.mark.parametrize("name", NAMES)
def test_exact_solves_pde_default_parameters(name):
    check_exact_solves_pde(P.PROBLEMS[name]())


@pytest.mark.parametrize("name", NAMES)
def test_exact_solves_pde_random_parameters(name):
    @SETTINGS
    @given(kwargs=PARAMS[name])
    def check(kwargs):
        check_exact_solves_pde(P.PROBLEMS[name](**kwargs), n=64)

    check()


# ------------------------------ residual implements the stated operator
def spec_operator(problem: P.Problem, g, x: torch.Tensor, fd) -> torch.Tensor:
    """The differential operator of the spec (no source term) applied to g, by finite differences."""
    D = lambda *dims: fd(g, x, dims, h=1e-3)  # noqa: E731  (N, k)
    G = g(x)
    p = problem.params
    if problem.name == "burgers":
        return D(1) + G * D(0) - p["nu"] * D(0, 0)
    if problem.name == "poisson2d":
        return -(D(0, 0) + D(1, 1))
    if problem.name == "heat1d":
        return D(1) - p["alpha"] * D(0, 0)
    if problem.name == "wave1d":
        return D(1, 1) - p["c"] ** 2 * D(0, 0)
    if problem.name == "helmholtz2d":
        return D(0, 0) + D(1, 1) + p["k"] ** 2 * G
    if problem.name == "elastic2d":
        lam, mu, rho = p["lam"], p["mu"], p["rho"]
        dxx, dyy, dxy, dtt = D(0, 0), D(1, 1), D(0, 1), D(2, 2)
        grad_div = torch.stack([dxx[:, 0] + dxy[:, 1], dxy[:, 0] + dyy[:, 1]], dim=1)
        return rho * dtt - (lam + mu) * grad_div - mu * (dxx + dyy)
    raise AssertionError(problem.name)


@pytest.mark.parametrize("name", NAMES)
def test_residual_implements_stated_pde(name, fd):
    """residual(x, g) - residual(x, 0) equals the spec's operator applied to an arbitrary smooth g."""
    problem = P.PROBLEMS[name]()
    k = problem.output_dim

    def g(x: torch.Tensor) -> torch.Tensor:
        cols = [
            torch.sin(0.7 * x[:, 0] + 1.1 * (j + 1) * x[:, -1] + j) * (1 + 0.3 * x[:, 1] ** 2)
            + 0.2 * (j + 1) * x[:, 0] * x[:, -1] ** 2
            for j in range(k)
        ]
        return torch.stack(cols, dim=1)  # (N, k)

    x = interior(problem, 64, seed=3).requires_grad_()
    zero_field = 0.0 * x[:, :1].expand(-1, k)  # depends on x, value 0
    operator = problem.residual(x, g(x)) - problem.residual(x, zero_field)
    expected = spec_operator(problem, g, x, fd)
    assert torch.allclose(operator.detach(), expected, rtol=1e-5, atol=1e-5), max_abs(operator - expected)


# ------------------------------------------------------- exact: details
@pytest.mark.parametrize("name", NAMES)
def test_exact_follows_input_dtype_and_accepts_no_grad(name):
    problem = P.PROBLEMS[name]()
    x64 = interior(problem, 32)
    with torch.no_grad():
        u64 = problem.exact(x64)
    u32 = problem.exact(x64.float())
    assert u64.dtype == torch.float64 and u32.dtype == torch.float32
    assert u32.shape == u64.shape == (32, problem.output_dim)
    assert torch.allclose(u32.double(), u64, atol=1e-5)


def test_separation_of_variables_solutions_match_spec_formulas():
    x = interior(P.PROBLEMS["heat1d"](), 100)
    xs, t = x[:, 0], x[:, 1]
    heat = P.PROBLEMS["heat1d"](alpha=0.3, modes=[(1, 1.0), (2, -0.4)])
    want = torch.sin(PI * xs) * torch.exp(-0.3 * PI**2 * t) - 0.4 * torch.sin(2 * PI * xs) * torch.exp(
        -0.3 * 4 * PI**2 * t
    )
    assert torch.allclose(heat.exact(x)[:, 0], want, atol=1e-13)
    wave = P.PROBLEMS["wave1d"](c=1.5, modes=[(1, 1.0), (3, 0.5)])
    # d'Alembert: u(x, t) = (F(x - ct) + F(x + ct)) / 2 with F the odd periodic initial profile.
    F = lambda z: torch.sin(PI * z) + 0.5 * torch.sin(3 * PI * z)  # noqa: E731
    assert torch.allclose(wave.exact(x)[:, 0], 0.5 * (F(xs - 1.5 * t) + F(xs + 1.5 * t)), atol=1e-12)
    helm = P.PROBLEMS["helmholtz2d"](k=2.0, a1=1.0, a2=3.0)
    y = interior(helm, 100)
    assert torch.allclose(helm.exact(y)[:, 0], torch.sin(PI * y[:, 0]) * torch.sin(3 * PI * y[:, 1]), atol=1e-14)


def test_invalid_parameters_are_rejected():
    with pytest.raises(ValueError):
        P.PROBLEMS["burgers"](nu=-1.0)
    with pytest.raises(ValueError):
        P.PROBLEMS["heat1d"](modes=[(1.5, 1.0)])  # non-integer mode breaks u = 0 on the boundary
    with pytest.raises(ValueError):
        P.PROBLEMS["wave1d"](c=0.0)
    with pytest.raises(ValueError):
        P.PROBLEMS["elastic2d"](mu=-1.0)
    with pytest.raises(TypeError):
        P.PROBLEMS["poisson2d"](frequency=3)  # unknown keyword


def test_residual_checks_output_shape():
    problem = P.PROBLEMS["elastic2d"]()
    x = interior(problem, 8).requires_grad_()
    with pytest.raises(ValueError, match="shape"):
        problem.residual(x, x[:, :1])


# ----------------------------------------------------------- conditions
def on_part(problem: P.Problem, name: str, x: torch.Tensor) -> torch.Tensor:
    """Bool (N,): the points lie where a condition called ``name`` lives."""
    lo = torch.tensor(problem.lower, dtype=torch.float64)
    hi = torch.tensor(problem.upper, dtype=torch.float64)
    if name.startswith("initial"):
        t = problem.input_names.index("t")
        return x[:, t] == lo[t]
    if name == "boundary":
        spatial = [i for i, n in enumerate(problem.input_names) if n != "t"]
        return ((x[:, spatial] == lo[spatial]) | (x[:, spatial] == hi[spatial])).any(dim=1)
    raise AssertionError(f"unexpected condition {name}")


@pytest.mark.parametrize("name", NAMES)
def test_condition_points_lie_on_their_part_of_the_domain(name, generator):
    problem = P.PROBLEMS[name]()
    lo = torch.tensor(problem.lower, dtype=torch.float64)
    hi = torch.tensor(problem.upper, dtype=torch.float64)
    for condition in problem.conditions():
        x = condition.sample(400, generator)
        assert x.shape == (400, problem.input_dim) and x.dtype == torch.float64 and x.device.type == "cpu"
        assert bool(((x >= lo) & (x <= hi)).all()), condition.name
        assert bool(on_part(problem, condition.name, x).all()), condition.name
        # Reproducible from the generator state.
        g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        assert torch.equal(condition.sample(50, g1), condition.sample(50, g2))


@pytest.mark.parametrize("name", NAMES)
def test_boundary_sampling_covers_every_face(name, generator):
    problem = P.PROBLEMS[name]()
    (boundary,) = [c for c in problem.conditions() if c.name == "boundary"]
    x = boundary.sample(4000, generator)
    spatial = problem.spatial_dims
    faces = 2 * len(spatial)
    for i in spatial:
        for bound in (problem.lower[i], problem.upper[i]):
            share = float((x[:, i] == bound).double().mean())
            assert share > 0.6 / faces, (problem.input_names[i], bound, share)  # equal-size faces
    # Off their face, boundary points are spread over the whole box (not pinned to corners).
    if problem.time_dim is not None:
        t = x[:, problem.time_dim]
        assert float(t.min()) < problem.lower[problem.time_dim] + 0.05
        assert float(t.max()) > problem.upper[problem.time_dim] - 0.05


@pytest.mark.parametrize("name", NAMES)
def test_conditions_hold_on_exact_solution(name, generator):
    problem = P.PROBLEMS[name]()
    for condition in problem.conditions():
        x = condition.sample(300, generator).requires_grad_()
        r = condition.residual(x, problem.exact(x))
        assert r.dim() == 2 and r.shape[0] == 300
        assert max_abs(r) < 1e-9, (condition.name, max_abs(r))
        # Non-vacuity: the residual detects a perturbation with nonzero value and time derivative.
        bump = 0.1 * (1.0 + x[:, :1] + x[:, -1:])
        assert max_abs(condition.residual(x, problem.exact(x) + bump)) > 1e-2, condition.name


def test_initial_conditions_match_spec():
    """Initial data stated in the spec, independent of the exact-solution code."""
    g = torch.Generator().manual_seed(0)
    burgers = P.PROBLEMS["burgers"]()
    (ic,) = [c for c in burgers.conditions() if c.name == "initial"]
    x = ic.sample(200, g)
    target = -torch.sin(PI * x[:, :1])
    assert max_abs(ic.residual(x, target)) < 1e-15
    heat = P.PROBLEMS["heat1d"](modes=[(1, 1.0), (3, 0.5)])
    (ic,) = [c for c in heat.conditions() if c.name == "initial"]
    x = ic.sample(200, g)
    target = torch.sin(PI * x[:, :1]) + 0.5 * torch.sin(3 * PI * x[:, :1])
    assert max_abs(ic.residual(x, target)) < 1e-14
    # Wave: u_t(0, x) = 0 holds for a field with no time dependence and fails for u = t.
    wave = P.PROBLEMS["wave1d"]()
    (iv,) = [c for c in wave.conditions() if c.name == "initial_velocity"]
    x = iv.sample(50, g).requires_grad_()
    assert max_abs(iv.residual(x, torch.sin(x[:, :1]))) == 0.0
    assert torch.allclose(iv.residual(x, 2.0 * x[:, 1:]), torch.full((50, 1), 2.0, dtype=torch.float64))


# ---------------------------------------------------- grids and errors
@pytest.mark.parametrize("name", NAMES)
def test_test_grid_default(name):
    problem = P.PROBLEMS[name]()
    grid = P.test_grid(problem)
    d = problem.input_dim
    assert grid.dtype == torch.float64 and grid.dim() == 2 and grid.shape[1] == d
    assert grid.shape[0] <= 30_000
    lo = torch.tensor(problem.lower, dtype=torch.float64)
    hi = torch.tensor(problem.upper, dtype=torch.float64)
    assert torch.equal(grid.min(dim=0).values, lo) and torch.equal(grid.max(dim=0).values, hi)
    assert torch.unique(grid, dim=0).shape[0] == grid.shape[0]
    assert problem.exact(grid).shape == (grid.shape[0], problem.output_dim)


def test_test_grid_sizes_and_order():
    burgers = P.PROBLEMS["burgers"]()
    assert P.test_grid(burgers).shape == (256 * 100, 2)
    grid = P.test_grid(burgers, 5)
    assert grid.shape == (25, 2)
    grid = P.test_grid(burgers, (3, 4))
    assert grid.shape == (12, 2)
    assert torch.equal(grid[:4, 0], torch.full((4,), -1.0, dtype=torch.float64))  # last input varies fastest
    assert torch.allclose(grid[:4, 1], torch.linspace(0, 1, 4, dtype=torch.float64))
    mesh = grid.reshape(3, 4, 2)
    assert torch.allclose(mesh[:, 0, 0], torch.linspace(-1, 1, 3, dtype=torch.float64))
    with pytest.raises(ValueError):
        P.test_grid(burgers, (3, 4, 5))
    assert P.test_grid(P.PROBLEMS["elastic2d"](), 4).shape == (64, 3)


def test_relative_l2():
    exact = torch.tensor([[3.0], [4.0]], dtype=torch.float64)
    assert P.relative_l2(exact, exact) == 0.0
    assert math.isclose(P.relative_l2(1.1 * exact, exact), 0.1, rel_tol=1e-12)
    assert math.isclose(P.relative_l2(torch.tensor([3.0, 4.0]), exact), 0.0, abs_tol=1e-7)  # (N,) vs (N, 1)
    assert math.isclose(P.relative_l2(torch.zeros(2, 1), exact), 1.0)
    # ||(0, 1, 0)|| / ||(1, 1, 1)|| over all entries of a 2-output field.
    pred = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    ref = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert math.isclose(P.relative_l2(pred, ref), 1 / math.sqrt(3), rel_tol=1e-12)
    assert P.relative_l2(torch.zeros(3), torch.zeros(3)) == 0.0
    assert P.relative_l2(torch.ones(3), torch.zeros(3)) == math.inf
    with pytest.raises(ValueError):
        P.relative_l2(torch.zeros(2, 2), torch.zeros(4))
