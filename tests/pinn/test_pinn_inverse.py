"""Inverse problems: unknown coefficients train with the network, are logged every step, report
their error against the true value, and checkpoint and resume bit for bit."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import phasetrain
from phasetrain import Component, hookimpl
from phasetrain.plugins.pinn.conditions import observations
from phasetrain.plugins.pinn.derivatives import Derivatives
from phasetrain.plugins.pinn.inverse import Unknown
from phasetrain.plugins.pinn.problem_base import Problem
from phasetrain.plugins.pinn.problems import PROBLEMS
from phasetrain.registry import plugin
from phasetrain.testing import HookRecorder

from ..conftest import StopAt


def _sets(tmp_path, *extra):
    return [f"run.out_dir='{tmp_path}'", "observers.console.quiet=true", "run.eval_every=0",
            "run.checkpoint_every=0", *extra]


INVERSE = {"task": {"use": "pinn", "hidden": 8, "depth": 2, "dtype": "float64", "eval_grid": [9, 5]},
           "residual": {"use": "burgers-inverse", "observations": 24, "initial_nu": 0.02},
           "sampler": {"use": "sobol", "n": 32}, "optimizer": {"use": "adam", "lr": 0.01}}


def test_unknowns_are_trained_logged_every_step_and_reported_with_their_error(tmp_path):
    recorder = HookRecorder()
    trainer = phasetrain.Trainer.from_config(INVERSE, _sets(tmp_path, "run.steps=4"), plugins=[recorder])
    unknowns = trainer.task.unknowns
    assert {id(p) for p in unknowns.parameters()} <= {id(p) for p in trainer.trainable}
    assert unknowns.values() == pytest.approx({"lambda1": 0.0, "nu": 0.02})
    result = trainer.fit().eval
    logged = [m["coef_nu"] for m in recorder.metrics]
    assert len(logged) == 4 and len({float(v) for v in logged}) == 4  # one value per step, each moved
    assert result["coef_nu"] == pytest.approx(float(unknowns.value("nu").detach()))
    nu = PROBLEMS["burgers-inverse"]().nu
    assert result["coef_nu_error"] == pytest.approx(abs(result["coef_nu"] - nu) / nu)
    assert result["coef_lambda1_error"] == pytest.approx(abs(result["coef_lambda1"] - 1.0))


def test_the_residual_reads_the_true_values_until_bound_and_the_trained_ones_after():
    problem = PROBLEMS["burgers-inverse"](initial_nu=0.05)
    x = torch.rand(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    x.requires_grad_(True)
    assert float(problem.residual(x, problem.exact(x)).detach().abs().max()) < 1e-7
    from phasetrain.plugins.pinn.inverse import Unknowns

    bound = Unknowns(problem.unknowns)
    problem.bind(bound)
    assert float(problem.residual(x, problem.exact(x)).detach().abs().max()) > 1e-3  # nu = 0.05, lambda1 = 0
    assert float(bound.value("nu")) == pytest.approx(0.05) and float(bound.raw["nu"]) == pytest.approx(-2.9957, 1e-4)
    with pytest.raises(ValueError, match="positive initial value"):
        Unknown(-1.0, positive=True)


STAGED = ["run.steps=6", "schedule={use='staged', stages=[{name='adam', steps=3}, "
          "{name='lbfgs', optimizer={use='lbfgs', max_iter=3, history_size=5}}]}"]


@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stop=st.integers(1, 5))
def test_unknowns_checkpoint_and_resume_bit_for_bit(stop, tmp_path_factory):
    base = tmp_path_factory.mktemp("inverse-resume")
    whole = phasetrain.Trainer.from_config(INVERSE, _sets(base / "a", *STAGED))
    whole.fit()
    first = phasetrain.Trainer.from_config(INVERSE, _sets(base / "b", *STAGED), plugins=[StopAt(stop)])
    first.fit()
    saved = phasetrain.load_checkpoint(base / "b")["model"]
    assert torch.equal(saved["unknowns.raw.nu"], first.task.unknowns.raw["nu"].detach())
    resumed = phasetrain.Trainer.from_config(INVERSE, _sets(base / "b", *STAGED))
    resumed.resume(report=lambda _m: None)
    resumed.fit()
    for name in ("lambda1", "nu"):
        assert torch.equal(whole.task.unknowns.raw[name], resumed.task.unknowns.raw[name]), name
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


class Spring(Problem):
    """u'' + c u = 0 on [0, 2] with c unknown (true 4): u = sin(2 x) + 0.5 cos(2 x), from 20 observations."""

    name, input_names, output_names = "spring", ("x",), ("u",)
    lower, upper = (0.0,), (2.0,)
    default_grid = (101,)

    def __init__(self):
        super().__init__()
        self.unknowns = {"c": Unknown(1.0, 4.0, positive=True)}

    def exact(self, x):
        return torch.sin(2 * x[:, :1]) + 0.5 * torch.cos(2 * x[:, :1])

    def residual(self, x, u):
        return (Derivatives(u, x)(0, 0) + self.coefficient("c") * u[:, 0])[:, None]

    def conditions(self):
        return [observations("data", self, 20)]


class SpringPlugin:
    @hookimpl
    def phasetrain_components(self):
        return [Component("residual", "spring", lambda _options, _ctx: Spring())]


@pytest.mark.slow
def test_a_short_fit_identifies_a_coefficient_from_observations(tmp_path):
    data = {"task": {"use": "pinn", "hidden": 16, "depth": 2, "dtype": "float64"}, "residual": {"use": "spring"},
            "sampler": {"use": "sobol", "n": 48}, "optimizer": {"use": "lbfgs", "max_iter": 50}}
    trainer = phasetrain.Trainer.from_config(data, _sets(tmp_path, "run.steps=8"),
                                             plugins=[plugin(SpringPlugin(), "spring", "tests")])
    result = trainer.fit().eval
    assert result["coef_c_error"] < 1e-3, result
    assert result["rel_l2"] < 1e-3, result
