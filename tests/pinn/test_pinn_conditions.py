"""Condition types against manufactured solutions: each holds on its solution and a wrong sign
breaks it; a short fit satisfies each; periodic pairs survive any chunking."""

from __future__ import annotations

import math

import attrs
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import phasetrain
from phasetrain import Component, hookimpl
from phasetrain.plugins.pinn.conditions import dirichlet, initial, neumann, observations, periodic, robin
from phasetrain.plugins.pinn.derivatives import Derivatives
from phasetrain.plugins.pinn.geometry import Annulus, Disk, l_shape
from phasetrain.plugins.pinn.problem_base import Problem
from phasetrain.registry import plugin

PI = math.pi


def _plate(geometry):
    class Plate(Problem):
        """u = sin(x) e^y + x^2 on a 2-D geometry (only the conditions are used)."""

        name, input_names, output_names = "plate", ("x", "y"), ("u",)
        lower, upper = geometry.lower, geometry.upper

        def exact(self, x):
            return (torch.sin(x[:, 0]) * torch.exp(x[:, 1]) + x[:, 0] ** 2)[:, None]

        def gradient(self, x):
            return torch.stack([torch.cos(x[:, 0]) * torch.exp(x[:, 1]) + 2 * x[:, 0],
                                torch.sin(x[:, 0]) * torch.exp(x[:, 1])], dim=1)

    Plate.geometry = geometry
    return Plate()


def _outward(name, x):
    """The outward unit normal, from the shape's formula (not from the geometry code)."""
    if name == "disk":
        return (x - torch.tensor([0.5, 0.0], dtype=torch.float64)) / 1.5
    if name == "annulus":
        r = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        return torch.where(r > 0.75, x / r, -x / r)
    # L-shape: the edge a point lies on decides (x = +-1, y = +-1, or the re-entrant x = 0, y = 0).
    normal = torch.zeros_like(x)
    for column, value, sign in ((0, 1.0, 1), (0, -1.0, -1), (1, 1.0, 1), (1, -1.0, -1), (0, 0.0, 1), (1, 0.0, 1)):
        on = (x[:, column] - value).abs() < 1e-12
        normal[on] = 0.0
        normal[on, column] = sign
    return normal


SHAPES = {"disk": lambda: Disk((0.5, 0.0), 1.5), "annulus": lambda: Annulus((0, 0), 0.5, 1.0), "l-shape": l_shape}


def _worst(condition, problem, n=200, seed=0):
    rows = condition.sample(n, torch.Generator().manual_seed(seed))
    return float(condition.evaluate(problem.exact, rows).detach().abs().max())


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_boundary_conditions_hold_on_their_solution_and_a_wrong_sign_breaks_them(shape):
    problem = _plate(SHAPES[shape]())

    def flux(x, sign=1.0):
        return sign * (problem.gradient(x) * _outward(shape, x)).sum(dim=1, keepdim=True)

    right = [
        dirichlet("d", problem, problem.exact),
        neumann("n", problem, flux),
        robin("r", problem, 2.0, 0.5, lambda x: 2 * problem.exact(x) + 0.5 * flux(x)),
    ]
    wrong = [
        dirichlet("d", problem, lambda x: -problem.exact(x)),
        neumann("n", problem, lambda x: flux(x, -1.0)),
        robin("r", problem, 2.0, -0.5, lambda x: 2 * problem.exact(x) + 0.5 * flux(x)),
    ]
    for good, bad in zip(right, wrong, strict=True):
        assert _worst(good, problem) < 1e-10, good.name
        assert _worst(bad, problem) > 0.1, bad.name
    # ``where`` restricts a condition to part of the boundary.
    left = neumann("left", problem, flux, where=lambda x: x[:, 0] < 0.0)
    rows = left.sample(100, torch.Generator().manual_seed(1))
    assert bool((rows[:, 0] < 0).all()) and rows.shape == (100, 4)


class Slab(Problem):
    """u = sin(pi x) e^{-t} + cos(2 pi x) + t x on [-1, 1] x [0, 1]: periodic in x only at t = 0's slope."""

    name, input_names, output_names = "slab", ("x", "t"), ("u",)
    lower, upper = (-1.0, 0.0), (1.0, 1.0)

    def exact(self, x):
        xs, t = x[:, 0], x[:, 1]
        return (torch.sin(PI * xs) * torch.exp(-t) + torch.cos(2 * PI * xs) + 0.3 * t * torch.sin(PI * xs))[:, None]


def test_periodic_and_initial_conditions_hold_on_their_solution_and_a_wrong_sign_breaks_them():
    slab = Slab()
    pair = periodic("p", slab, dim=0, derivatives=2)
    assert _worst(pair, slab) < 1e-10
    rows = pair.sample(50, torch.Generator().manual_seed(0))
    assert rows.shape == (50, 4) and pair.group == 2
    torch.testing.assert_close(rows[:, 1], rows[:, 3])  # the partners share their time
    assert bool((rows[:, 0] == -1.0).all() and (rows[:, 2] == 1.0).all())
    shifted = type("Shifted", (Slab,), {"exact": lambda self, x: Slab.exact(self, x) + 0.2 * x[:, :1]})()
    assert _worst(pair, shifted) > 0.1  # u + 0.2 x is not periodic
    # u_t(x, 0) = -sin(pi x) + 0.3 sin(pi x)
    velocity = initial("v", slab, lambda x: -0.7 * torch.sin(PI * x[:, :1]), order=1)
    assert _worst(velocity, slab) < 1e-10
    assert _worst(initial("v", slab, lambda x: 0.7 * torch.sin(PI * x[:, :1]), order=1), slab) > 0.1
    assert _worst(initial("u0", slab, lambda x: torch.sin(PI * x[:, :1]) + torch.cos(2 * PI * x[:, :1])), slab) < 1e-12


def test_observations_carry_values_and_their_stated_noise():
    slab = Slab()
    clean = observations("data", slab, 500)
    assert clean.points == 500 and not clean.noisy and _worst(clean, slab) == 0.0
    noisy = observations("data", slab, 5000, noise=0.05)
    rows = noisy.sample(5000, torch.Generator().manual_seed(3))
    residual = noisy.evaluate(slab.exact, rows).detach()[:, 0]
    spread = slab.exact(rows[:, :2])[:, 0].std()
    assert noisy.noisy and abs(float(residual.std() / spread) - 0.05) < 0.005
    assert abs(float(residual.mean() / spread)) < 0.005


# -- a short fit satisfies each condition ---------------------------------------------------------


class Rod(Problem):
    """u'' - u = f on [0, 1] with u = sin(2 pi x) + 0.5 (periodic too); the conditions are chosen per test."""

    name, input_names, output_names = "rod", ("x",), ("u",)
    lower, upper = (0.0,), (1.0,)
    default_grid = (101,)
    kind = "dirichlet"

    def exact(self, x):
        return torch.sin(2 * PI * x[:, :1]) + 0.5

    def residual(self, x, u):
        f = -(4 * PI**2 + 1) * torch.sin(2 * PI * x[:, 0]) - 0.5
        return (Derivatives(u, x)(0, 0) - u[:, 0] - f.to(u.dtype))[:, None]

    def conditions(self):
        slope = lambda x: 2 * PI * torch.cos(2 * PI * x[:, :1]) * torch.where(x[:, :1] > 0.5, 1.0, -1.0)  # noqa: E731
        return {
            "dirichlet": lambda: [dirichlet("ends", self, self.exact)],
            "neumann": lambda: [neumann("ends", self, slope)],
            "robin": lambda: [robin("ends", self, 1.0, 1.0, lambda x: self.exact(x) + slope(x))],
            "periodic": lambda: [periodic("ends", self, dim=0)],
            "observations": lambda: [observations("ends", self, 12)],
        }[self.kind]()


class Oscillator(Problem):
    """u'' + u = 0 on t in [0, 2], u(0) = 1, u'(0) = 0.5."""

    name, input_names, output_names = "oscillator", ("t",), ("u",)
    lower, upper = (0.0,), (2.0,)
    default_grid = (101,)
    kind = "initial"

    def exact(self, x):
        return torch.cos(x[:, :1]) + 0.5 * torch.sin(x[:, :1])

    def residual(self, x, u):
        return (Derivatives(u, x)(0, 0) + u[:, 0])[:, None]

    def conditions(self):
        return [initial("initial", self, lambda x: torch.ones(len(x), 1)),
                initial("initial_velocity", self, lambda x: torch.full((len(x), 1), 0.5), order=1)]


@attrs.define
class KindOptions:
    kind: str = "dirichlet"


class Problems:
    @hookimpl
    def phasetrain_components(self):
        def build(cls):
            return lambda options, _ctx: type(cls.__name__, (cls,), {"kind": options.kind})()

        return [Component("residual", "rod", build(Rod), KindOptions),
                Component("residual", "oscillator", build(Oscillator), KindOptions)]


PROBLEMS = plugin(Problems(), "condition-problems", "tests")


@pytest.mark.slow
@pytest.mark.parametrize(("residual", "kind"), [("rod", k) for k in
                                                ("dirichlet", "neumann", "robin", "periodic", "observations")]
                         + [("oscillator", "initial")])
def test_a_short_fit_satisfies_each_condition_type(residual, kind, tmp_path):
    data = {"task": {"use": "pinn", "hidden": 16, "depth": 2, "n_initial": 4, "n_boundary": 8, "dtype": "float64"},
            "residual": {"use": residual, "kind": kind}, "sampler": {"use": "sobol", "n": 48},
            "optimizer": {"use": "lbfgs", "max_iter": 50, "history_size": 50}}
    sets = [f"run.out_dir='{tmp_path}'", "observers.console.quiet=true", "run.steps=8", "run.eval_every=0",
            "run.checkpoint_every=0"]
    trainer = phasetrain.Trainer.from_config(data, sets, plugins=[PROBLEMS])
    result = trainer.fit().eval
    conditions = [k for k in result if k.startswith("mse_") and k != "mse_pde"]
    assert conditions and all(result[k] < 1e-6 for k in conditions), result
    assert result["rel_l2"] < 1e-2, result


# -- periodic pairs under chunking ----------------------------------------------------------------


FAST = settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(chunks=st.integers(1, 5), chunk=st.integers(1, 9))
def test_periodic_pairs_stay_whole_under_any_accumulation_and_residual_chunk(chunks, chunk, tmp_path):
    data = {"task": {"use": "pinn", "hidden": 8, "depth": 2, "n_initial": 7, "n_boundary": 11, "dtype": "float64",
                     "residual_chunk": chunk},
            "residual": {"use": "allen-cahn"}, "sampler": {"use": "sobol", "n": 13}}
    sets = [f"run.out_dir='{tmp_path}'", "observers.console.quiet=true", f"run.grad_accum_steps={chunks}"]
    trainer = phasetrain.Trainer.from_config(data, sets)
    task, model = trainer.task, trainer.model
    index = task.names.index("periodic") - 1
    pairs = task.conditions[index]
    for part in range(chunks):
        rows = task.batch(part).conditions[index]
        x, _ = pairs.split(rows)
        assert bool((x[0::2, 0] == -1.0).all() and (x[1::2, 0] == 1.0).all())
        assert torch.equal(x[0::2, 1], x[1::2, 1])

    def grads(k):
        task.chunks = k
        model.zero_grad()
        for i in range(k):
            (task.loss(model, task.batch(i)) / k).backward()
        return [p.grad.clone() for p in model.parameters()]

    for whole, split in zip(grads(1), grads(chunks), strict=True):
        torch.testing.assert_close(split, whole, rtol=1e-10, atol=1e-12)
    chunked = task._mean_squares(model)["periodic"]
    task.options = attrs.evolve(task.options, residual_chunk=10_000)
    assert task._mean_squares(model)["periodic"] == pytest.approx(chunked, rel=1e-12)
