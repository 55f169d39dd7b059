"""Task options and evaluation paths: hard constraints, causal weights, residuals without an exact
solution (TensorBoard on), and evaluation on a domain that is not a box."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import phasetrain
from phasetrain import Component, hookimpl
from phasetrain.errors import ConfigError
from phasetrain.plugins.pinn import contracts
from phasetrain.plugins.pinn.causal import CausalWeights
from phasetrain.plugins.pinn.derivatives import Derivatives
from phasetrain.plugins.pinn.problems import PROBLEMS
from phasetrain.registry import plugin

FAST = settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _sets(tmp_path, *extra):
    return [f"run.out_dir='{tmp_path}'", "observers.console.quiet=true", "run.eval_every=0",
            "run.checkpoint_every=0", *extra]


def _data(residual, **task):
    return {"task": {"use": "pinn", "hidden": 8, "depth": 2, "n_initial": 16, "n_boundary": 16, "dtype": "float64",
                     "eval_grid": [9, 5], **task},
            "residual": {"use": residual}, "sampler": {"use": "sobol", "n": 40}}


# -- hard constraints ---------------------------------------------------------------------------


def test_hard_constraints_satisfy_their_conditions_exactly_and_leave_the_loss(tmp_path):
    trainer = phasetrain.Trainer.from_config(_data("burgers", hard_constraints=True), _sets(tmp_path))
    task = trainer.task
    assert task.weights[task.names.index("initial")] == task.weights[task.names.index("boundary")] == 0.0
    metrics = trainer.evaluate()
    assert metrics["mse_initial"] < 1e-28 and metrics["mse_boundary"] < 1e-28  # the network, untrained
    assert metrics["eval_loss"] == pytest.approx(metrics["mse_pde"])
    data = _data("allen-cahn", hard_constraints=True, periodic_modes=3)
    data["residual"]["hard"] = "periodic"
    periodic = phasetrain.Trainer.from_config(data, _sets(tmp_path))
    t = torch.linspace(0, 1, 7, dtype=torch.float64)
    ends = torch.stack([torch.cat([-torch.ones(7), torch.ones(7)]).double(), t.repeat(2)], 1).requires_grad_(True)
    u = periodic.model(ends)
    d = Derivatives(u, ends)
    for value in (u[:, 0], d(0), d(0, 0), d(0, 0, 0)):
        torch.testing.assert_close(value[:7], value[7:], rtol=0, atol=1e-9)
    assert periodic.model.net[0].in_features == 1 + 2 * 3  # t, then cos and sin of 3 harmonics of x


def test_hard_constraints_on_a_residual_without_any_are_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="task.hard_constraints: the residual 'poisson2d' declares no hard"):
        phasetrain.Trainer.from_config(_data("poisson2d", hard_constraints=True, eval_grid=[5]), _sets(tmp_path))


# -- causal weights -----------------------------------------------------------------------------


def test_causal_weights_follow_the_formula_of_wang_et_al():
    causal = CausalWeights(epsilon=2.0, bins=4, t0=0.0, t1=1.0, time_dim=1)
    points = torch.tensor([[0.0, 0.1], [0.0, 0.3], [0.0, 0.35], [0.0, 0.9], [0.0, 1.0]], dtype=torch.float64)
    causal.assign(points)
    assert causal.bin.tolist() == [0, 1, 1, 3, 3] and causal.count.tolist() == [1, 2, 0, 2]
    causal.record(torch.tensor([1.0, 2.0, 4.0, 0.5, 1.5], dtype=torch.float64), slice(None), first=True)
    causal.finish()
    torch.testing.assert_close(causal.losses, torch.tensor([1.0, 3.0, 0.0, 1.0], dtype=torch.float64))
    causal.update()
    expected = torch.exp(-2.0 * torch.tensor([0.0, 1.0, 4.0, 4.0], dtype=torch.float64))
    assert float(CausalWeights(10.0, 4, 0.0, 1.0, 1).weights.min()) == 1.0  # before any losses
    torch.testing.assert_close(causal.weights, expected)
    # Summed with the squared residuals, the factors are (1/M) sum_i w_i L_i.
    factors = causal.factors(torch.zeros(5, dtype=torch.float64))
    squares = torch.tensor([1.0, 2.0, 4.0, 0.5, 1.5], dtype=torch.float64)
    assert float((factors * squares).sum()) == pytest.approx(float((expected * causal.losses).sum() / 4))
    # Weights that could only slow float32 arithmetic down (subnormal products) are 0.
    causal.epsilon = 10.0
    causal.update()
    assert causal.weights.tolist() == [1.0, pytest.approx(math.exp(-10.0)), 0.0, 0.0]


@FAST
@given(chunks=st.integers(2, 4))
def test_causal_micro_batches_accumulate_exactly_the_full_batch_gradient(chunks, tmp_path):
    data = _data("burgers", causal_epsilon=5.0, causal_bins=4)
    trainer = phasetrain.Trainer.from_config(data, _sets(tmp_path))
    trainer.enter_phase(trainer.schedule.phase(trainer))
    trainer.task.pre_step(trainer, 0)  # measures the bins and sets the weights
    task, model = trainer.task, trainer.model
    assert float(task.causal.weights.min()) < 1.0

    def grads(k):
        task.chunks = k
        model.zero_grad()
        for i in range(k):
            (task.loss(model, task.batch(i)) / k).backward()
        return [p.grad.clone() for p in model.parameters()], task.causal.losses.clone()

    (whole, losses), (split, again) = grads(1), grads(chunks)
    torch.testing.assert_close(again, losses, rtol=1e-12, atol=1e-15)
    for a, b in zip(whole, split, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_a_causal_run_resumes_bit_for_bit_and_logs_the_smallest_weight(tmp_path):
    sets = ["run.steps=6", "task.causal_epsilon=1.0", "task.causal_bins=4"]
    data = _data("burgers")
    whole = phasetrain.Trainer.from_config(data, _sets(tmp_path / "a", *sets))
    assert 0 < whole.fit().metrics["causal_weight_min"] < 1

    class StopAt3:
        @hookimpl
        def post_step(self, trainer, step):
            if step == 2:
                trainer.request_stop()

    phasetrain.Trainer.from_config(data, _sets(tmp_path / "b", *sets), plugins=[StopAt3()]).fit()
    resumed = phasetrain.Trainer.from_config(data, _sets(tmp_path / "b", *sets))
    resumed.resume(report=lambda _m: None)
    resumed.fit()
    assert torch.equal(whole.task.causal.losses, resumed.task.causal.losses)
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_causal_weights_need_a_time_input(tmp_path):
    with pytest.raises(ConfigError, match="task.causal_epsilon: causal weights need a time input"):
        phasetrain.Trainer.from_config(_data("poisson2d", causal_epsilon=1.0, eval_grid=[5]), _sets(tmp_path))


# -- no exact solution --------------------------------------------------------------------------


class Unsolved(type(PROBLEMS["heat1d"]())):
    """The heat equation, as a plugin that knows no solution."""

    name = "unsolved"

    def exact(self, x):
        raise NotImplementedError


class UnsolvedPlugin:
    @hookimpl
    def phasetrain_components(self):
        return [Component("residual", "unsolved", lambda _options, _ctx: Unsolved())]


UNSOLVED = plugin(UnsolvedPlugin(), "unsolved", "tests")


def test_a_residual_without_an_exact_solution_evaluates_three_times_with_tensorboard_on(tmp_path):
    contracts.evaluates_repeatedly("unsolved", plugins=[UNSOLVED])
    data = _data("unsolved")
    data["observers"] = {"tensorboard": {"image_every": 1}}
    trainer = phasetrain.Trainer.from_config(data, _sets(tmp_path, "run.steps=3", "run.eval_every=1"),
                                             plugins=[UNSOLVED])
    outcome = trainer.fit()
    assert outcome.status == "completed" and "rel_l2" not in outcome.eval and outcome.eval["eval_loss"] > 0
    images = trainer.task.images(trainer.model)
    # One panel and its colour bar: the prediction alone, since there is nothing to compare with.
    assert sorted(images) == ["u"] and len(images["u"].axes) == 2
    assert "no exact solution" in images["u"].axes[0].get_title()
    assert list((tmp_path / "tensorboard").glob("events.*")) or list(tmp_path.rglob("events.*"))


# -- a domain that is not a box -----------------------------------------------------------------


def test_evaluation_on_the_l_shape_uses_only_the_grid_points_inside_it(tmp_path):
    trainer = phasetrain.Trainer.from_config(_data("poisson-lshape", eval_grid=[21]), _sets(tmp_path))
    grid, exact = trainer.task.grid()
    assert grid.shape[0] == 21 * 21 - 10 * 10  # the open quadrant (0, 1]^2 is not in the L
    assert bool(trainer.task.problem.domain.inside(grid).all())
    assert bool(((trainer.task.points[:, 0] <= 0) | (trainer.task.points[:, 1] <= 0)).all())
    pred = trainer.task.predict(trainer.model, grid)
    metrics = trainer.evaluate()
    assert metrics["rel_l2"] == pytest.approx(float((pred - exact).norm() / exact.norm()))
    figure = trainer.task.images(trainer.model)["u"]
    prediction, _exact, error = (ax.get_images()[0].get_array() for ax in figure.axes[:3])  # then the colour bars
    # Image rows run along y (origin lower), columns along x: the removed quadrant x, y > 0 is the
    # top right, blank (masked) in every panel; every point of the L is drawn.
    for picture in (prediction, error):
        values = np.ma.filled(picture.astype(float), np.nan)
        assert np.isnan(values[11:, 11:]).all()
        assert np.isfinite(values[:11, :]).all() and np.isfinite(values[:, :11]).all()
    assert float(np.nanmax(np.ma.filled(error.astype(float), np.nan))) > 0
    assert math.isfinite(metrics["mse_flux"])
