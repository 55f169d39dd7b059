"""The ``pinn`` task wired into the trainer: presets, training, chunking, resume, export, plugins."""

from __future__ import annotations

import math
import tomllib

import attrs
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import phasetrain
from phasetrain import Component, hookimpl
from phasetrain import config as config_mod
from phasetrain.errors import BadInput, ConfigError
from phasetrain.plugins.pinn.derivatives import Derivatives
from phasetrain.plugins.pinn.problem_base import Condition, Problem
from phasetrain.plugins.pinn.problems import PROBLEMS
from phasetrain.registry import load_registry, plugin

from ..conftest import StopAt

FAST = settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def small(tmp_path, *extra: str, sampler: str = "sobol", n: int = 128) -> list[str]:
    """Overrides for a tiny, quiet PINN run (small net, few points) writing under ``tmp_path``."""
    return [
        f"run.out_dir='{tmp_path / 'run'}'", "observers.console.quiet=true", "run.device='cpu'",
        "run.eval_every=0", "run.checkpoint_every=0", "task.use='pinn'", "task.hidden=12",
        "task.depth=2", "task.n_initial=32", "task.n_boundary=32", f"sampler={{use='{sampler}', n={n}}}",
        *extra,
    ]


def burgers(tmp_path, *extra: str, **kw) -> dict:
    return {"task": {"use": "pinn"}, "residual": {"use": "burgers"}}, small(tmp_path, *extra, **kw)


# -- presets ------------------------------------------------------------------------------------


PINN_PRESETS = sorted(
    name for name, (resource, _) in load_registry().presets().items()
    if tomllib.loads(resource.read_text()).get("task", {}).get("use") == "pinn"
)


def test_there_is_a_preset_for_every_problem_and_the_cli_lists_them(capsys):
    from phasetrain import cli

    solved = {config_mod.load(name).residual.use for name in PINN_PRESETS}
    assert solved == set(PROBLEMS)
    assert cli.main(["presets"]) == 0
    listed = capsys.readouterr().out
    for name in PINN_PRESETS:
        assert any(line.split()[:2] == [name, "pinn"] for line in listed.splitlines()), name


@pytest.mark.parametrize("name", PINN_PRESETS)
def test_every_pinn_preset_validates_and_builds_adam_then_lbfgs(name, tmp_path):
    cfg = config_mod.load(name, [f"run.out_dir='{tmp_path}'", "sampler.n=64"])
    assert cfg.task.use == "pinn" and cfg.sampler is not None
    stages = cfg.schedule.options.stages
    assert cfg.schedule.use == "staged" and stages[-1].optimizer.use == "lbfgs"
    trainer = phasetrain.Trainer(cfg)  # builds the problem, sampler, points and model
    assert trainer.task.points.shape == (64, trainer.task.problem.input_dim)


# -- training -----------------------------------------------------------------------------------


def test_a_short_burgers_run_lowers_the_relative_l2_error(tmp_path):
    data, sets = burgers(tmp_path, "run.steps=300", "optimizer={use='adam', lr=5e-3}", n=256)
    trainer = phasetrain.Trainer.from_config(data, sets)
    before = trainer.evaluate()
    after = trainer.fit().eval
    assert math.isfinite(after["rel_l2"])
    assert after["rel_l2"] < 0.8 * before["rel_l2"]
    assert after["eval_loss"] < 0.5 * before["eval_loss"]


@FAST
@given(chunks=st.integers(2, 5))
def test_chunked_micro_batches_accumulate_exactly_the_full_batch_gradient(chunks, tmp_path):
    data, sets = burgers(tmp_path, "task.dtype='float64'", n=50)
    trainer = phasetrain.Trainer.from_config(data, sets)
    task, model = trainer.task, trainer.model

    def grads(k: int) -> list[torch.Tensor]:
        task.chunks = k
        model.zero_grad()
        for i in range(k):
            (task.loss(model, task.batch(i)) / k).backward()  # what the kernel's step does
        return [p.grad.clone() for p in model.parameters()]

    for whole, split in zip(grads(1), grads(chunks), strict=True):
        torch.testing.assert_close(split, whole, rtol=1e-10, atol=1e-12)


@FAST
@given(chunk=st.integers(1, 80))
def test_residual_magnitudes_do_not_depend_on_the_chunk_size(chunk, tmp_path):
    data, sets = burgers(tmp_path, "task.dtype='float64'", n=70)
    trainer = phasetrain.Trainer.from_config(data, sets)
    task = trainer.task
    whole = task.residual_magnitudes(trainer.model, task.sampler.points())
    task.options = attrs.evolve(task.options, residual_chunk=chunk)
    torch.testing.assert_close(task.residual_magnitudes(trainer.model, task.sampler.points()), whole)
    assert whole.shape == (70,) and bool((whole >= 0).all())


def test_loss_weights_scale_their_terms_and_unknown_terms_are_refused(tmp_path):
    data, sets = burgers(tmp_path, "task.dtype='float64'", n=64)
    plain = phasetrain.Trainer.from_config(data, sets)
    task = plain.task
    terms = task._mean_squares(plain.model)
    weighted = phasetrain.Trainer.from_config(data, [*sets, "task.weights={pde=2.0, initial=0.0}"])
    expected = 2 * terms["pde"] + terms["boundary"]
    assert weighted.evaluate()["eval_loss"] == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ConfigError, match=r"task\.weights\.bondary: unknown loss term .*boundary"):
        phasetrain.Trainer.from_config(data, [*sets, "task.weights={bondary=1.0}"])


def test_multi_output_problems_report_the_error_of_each_output(tmp_path):
    data = {"task": {"use": "pinn"}, "residual": {"use": "elastic2d"}}
    trainer = phasetrain.Trainer.from_config(data, small(tmp_path, "task.eval_grid=[5]", n=32))
    metrics = trainer.evaluate()
    assert {"rel_l2", "rel_l2_u", "rel_l2_v", "mse_initial_velocity"} <= metrics.keys()
    per_output = [metrics["rel_l2_u"], metrics["rel_l2_v"]]
    # The overall error squared is a weighted mean of the per-output errors squared.
    assert min(per_output) * (1 - 1e-12) <= metrics["rel_l2"] <= max(per_output) * (1 + 1e-12)


# -- checkpoints and resume ---------------------------------------------------------------------


RAD = [
    "run.steps=10", "task.dtype='float64'",
    "sampler={use='rad', n=48, every=2, pool_factor=3.0}",
    "schedule={use='staged', stages=[{name='adam', steps=6}, "
    "{name='lbfgs', optimizer={use='lbfgs', max_iter=3, history_size=5}}]}",
]


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stop=st.integers(1, 9))
def test_resuming_a_rad_run_continues_bit_for_bit(stop, tmp_path_factory):
    base = tmp_path_factory.mktemp("pinn-resume")
    data, _ = burgers(base)
    whole = phasetrain.Trainer.from_config(data, [*small(base / "a"), *RAD])
    whole.fit()
    first = phasetrain.Trainer.from_config(data, [*small(base / "b"), *RAD], plugins=[StopAt(stop)])
    assert first.fit().status == "interrupted"
    resumed = phasetrain.Trainer.from_config(data, [*small(base / "b"), *RAD])
    resumed.resume(report=lambda _m: None)
    assert resumed.step == stop
    resumed.fit()
    assert whole.task.sampler.num_updates == resumed.task.sampler.num_updates == 4  # steps 2, 4, 6, 8
    assert torch.equal(whole.task.points, resumed.task.points)
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{name} differs after resuming at step {stop}"


def test_the_checkpoint_holds_the_samplers_points(tmp_path):
    data, sets = burgers(tmp_path, "run.steps=3", "sampler={use='rar-d', n=40, every=1, add=5, pool_factor=2.0}")
    trainer = phasetrain.Trainer.from_config(data, sets)
    trainer.fit()
    saved = phasetrain.load_checkpoint(trainer.out_dir)["plugins"]["pinn_sampler"]
    assert saved["points"].shape == (50, 2)  # refined at steps 1 and 2
    assert torch.equal(saved["points"], trainer.task.sampler.points())


def test_load_model_maps_raw_coordinates_to_the_solution(tmp_path):
    data, sets = burgers(tmp_path, "run.steps=5")
    trainer = phasetrain.Trainer.from_config(data, sets)
    trainer.fit()
    loaded = phasetrain.load_model(trainer.out_dir)
    raw = torch.tensor([[-1.0, 0.0], [0.3, 0.5], [1.0, 1.0], [-0.25, 0.9]])  # (x, t)
    with torch.no_grad():
        assert torch.equal(loaded(raw), trainer.model.eval()(raw))
        # The box [-1, 1] x [0, 1] is normalised to [-1, 1]^2 inside the module.
        normalised = torch.stack([raw[:, 0], 2 * raw[:, 1] - 1], dim=1)
        torch.testing.assert_close(loaded.net(normalised), loaded(raw))


# -- configuration errors -----------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["residual", "sampler"])
def test_a_missing_residual_or_sampler_section_is_a_clear_error(missing, tmp_path):
    data = {"task": {"use": "pinn"}, "residual": {"use": "burgers"}, "sampler": {"use": "sobol", "n": 16}}
    del data[missing]
    sets = [f"run.out_dir='{tmp_path}'", "observers.console.quiet=true"]
    with pytest.raises(BadInput, match=rf"{missing}: the pinn task needs a \[{missing}\] section"):
        phasetrain.Trainer.from_config(data, sets)


@pytest.mark.parametrize(
    ("residual", "field"),
    [
        ({"use": "burgers", "nu": -1.0}, "residual.nu"),
        ({"use": "heat1d", "modes": [[1.5, 1.0]]}, "residual.modes"),
        ({"use": "elastic2d", "lam": -5.0}, "residual.lam"),
        ({"use": "poisson2d", "modes": [[1, 1]]}, "residual.modes"),
    ],
)
def test_bad_problem_options_name_their_field(residual, field):
    data = {"task": {"use": "pinn"}, "residual": residual, "sampler": {"use": "sobol"}}
    with pytest.raises(ConfigError) as info:
        config_mod.build(data)
    assert info.value.path.split("[")[0] == field


def test_an_eval_grid_that_does_not_fit_the_problem_is_refused_at_build(tmp_path):
    data, sets = burgers(tmp_path, "task.eval_grid=[5, 5, 5]", n=8)
    with pytest.raises(ConfigError, match=r"task\.eval_grid: give one size, or one per input of 'burgers' \(x, t\)"):
        phasetrain.Trainer.from_config(data, sets)


# -- a third-party residual ---------------------------------------------------------------------


class Bar(Problem):
    """Steady heat in a bar: ``u_xx = -pi^2 sin(pi x)`` on [0, 2], exact ``u = sin(pi x)``."""

    name = "bar"
    input_names = ("x",)
    output_names = ("u",)
    lower = (0.0,)
    upper = (2.0,)
    default_grid = (201,)

    def residual(self, x, u):
        return (Derivatives(u, x)(0, 0) + math.pi**2 * torch.sin(math.pi * x[:, 0]))[:, None]

    def exact(self, x):
        return torch.sin(math.pi * x[:, :1])

    def conditions(self):
        return [Condition("ends", self._boundary_points, lambda x, u: u - self.exact(x.detach()))]


class BarPlugin:
    @hookimpl
    def phasetrain_components(self):
        return [Component("residual", "bar", lambda _options, _ctx: Bar(), summary="a bar")]


def test_a_third_party_residual_trains_without_changes_to_phasetrain(tmp_path):
    data = {"task": {"use": "pinn"}, "residual": {"use": "bar"}}
    sets = small(tmp_path, "run.steps=200", "optimizer={use='adam', lr=1e-2}", n=64)
    trainer = phasetrain.Trainer.from_config(data, sets, plugins=[plugin(BarPlugin(), "bar", "bar-pde")])
    before = trainer.evaluate()["rel_l2"]
    after = trainer.fit().eval["rel_l2"]
    assert after < 0.5 * before
    assert trainer.task.points.min() >= 0.0 and trainer.task.points.max() <= 2.0


# -- images -------------------------------------------------------------------------------------


def test_images_show_prediction_exact_and_error_with_axes_colour_bars_and_the_errors_scale(tmp_path):
    data, sets = burgers(tmp_path, "task.eval_grid=[17, 9]", n=16)
    trainer = phasetrain.Trainer.from_config(data, sets)
    figures = trainer.task.images(trainer.model)
    assert set(figures) == {"u"}
    figure = figures["u"]
    panels = [ax for ax in figure.axes if ax.get_images()]
    assert len(figure.axes) == 6  # three fields, each with its colour bar
    assert [ax.get_title().split(":")[0] for ax in panels] == ["u", "u", "|error|"]
    assert [ax.get_xlabel() for ax in panels] == ["x", "x", "x"] and panels[0].get_ylabel() == "t"
    prediction, exact, error = (ax.get_images()[0] for ax in panels)
    assert exact.get_extent() == [-1.0, 1.0, 0.0, 1.0] and exact.get_array().shape == (9, 17)
    assert prediction.get_clim() == exact.get_clim()  # one scale for both
    assert error.get_clim() == (0.0, pytest.approx(float(error.get_array().max())))
    assert f"max {float(error.get_array().max()):.3g}" in panels[2].get_title()
    # Rows run along t upwards from t = 0, where u = -sin(pi x) is 1 at x = -0.5 (column 4 of 17)
    # and -1 at x = 0.5 (column 12).
    bottom = exact.get_array()[0]
    assert bottom[4] > bottom[8] > bottom[12]


def test_field_images_of_a_perfect_prediction_show_no_error():
    from phasetrain.plugins.pinn.images import field_images, to_rgb

    problem = PROBLEMS["poisson2d"]()
    grid = torch.cartesian_prod(torch.linspace(0, 1, 6), torch.linspace(0, 1, 4)).double()
    exact = problem.exact(grid)
    figure = field_images(problem, grid, exact.clone(), exact, (6, 4))["u"]
    prediction, same, error = (ax.get_images()[0] for ax in figure.axes if ax.get_images())
    assert np.array_equal(prediction.get_array(), same.get_array()) and prediction.get_array().shape == (4, 6)
    assert not error.get_array().any() and "max 0," in [ax for ax in figure.axes if ax.get_images()][2].get_title()
    assert to_rgb(figure).shape == (360, 1200, 3)  # 12 x 3.6 inches at 100 dpi
