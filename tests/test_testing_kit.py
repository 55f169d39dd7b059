"""phasetrain.testing, tested: each contract catches a component planted with the fault it is
about (and passes the same component without the fault), failures name their contract and show
a minimal example, and the strategies, comparisons and recorder behave as documented."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import phasetrain
from phasetrain import Component, hookimpl
from phasetrain.config import FieldValueError, in_range, non_negative, one_of, positive, probability
from phasetrain.errors import BadInput
from phasetrain.plugins.pinn.options import Poisson2DOptions, StaticSamplerOptions
from phasetrain.plugins.pinn.plugin import residual_component
from phasetrain.plugins.pinn.problems import Poisson2D
from phasetrain.plugins.pinn.samplers import UniformSampler
from phasetrain.plugins import offload_contracts as offload
from phasetrain.plugins.pinn import contracts as pinn
from phasetrain.registry import Registry, discover
from phasetrain.testing import (
    ContractViolation,
    HookRecorder,
    check_component,
    expected_events,
    optimizer,
    strategies,
)
from phasetrain.testing.bits import clone, differences, through_checkpoint
from phasetrain.testing.strategies import validator_allows

from .conftest import ROOT

QUICK = settings(max_examples=15, deadline=None)

# ---------------------------------------------------------------------------------------------
# Planted faults: one small plugin per fault, each also available without the fault
# ---------------------------------------------------------------------------------------------


@attrs.define
class MomentumOptions:
    lr: float = attrs.field(default=0.05, validator=positive)
    momentum: float = attrs.field(default=0.9, validator=probability)


class ForgetfulSGD(torch.optim.SGD):
    """SGD with momentum that drops its momentum buffers when it loads a state dict."""

    def load_state_dict(self, state_dict):
        super().load_state_dict({**state_dict, "state": {}})


def _sgd(cls):
    return lambda o, ctx: cls(ctx.params, lr=o.lr, momentum=o.momentum)


@attrs.define
class HostOptions:
    phases: list[str] = attrs.field(factory=lambda: ["predict"])


class ToHost:
    """Moves every optimizer state tensor to host memory in ``phases`` and back afterwards;
    with ``lose``, one tensor per parameter does not come back."""

    lose = False

    def __init__(self, options, ctx):
        self.phases = set(options.phases)
        self.parked = []

    @hookimpl
    def phase_enter(self, trainer, phase):
        if phase.name in self.phases:
            for opt in trainer.optimizers.values():
                for param, state in list(opt.state.items()):
                    devices = {k: v.device for k, v in state.items() if isinstance(v, torch.Tensor)}
                    opt.state[param] = {k: v.to("cpu", copy=True) if k in devices else v for k, v in state.items()}
                    self.parked.append((opt, param, devices))
            return
        for opt, param, devices in self.parked:
            back = {k: v.to(devices[k]) if k in devices else v for k, v in opt.state[param].items()}
            if self.lose and devices:
                del back[sorted(devices)[0]]
            opt.state[param] = back
        self.parked = []


class LosesATensor(ToHost):
    lose = True


class WrongPoisson(Poisson2D):
    """Poisson's equation with an exact solution 5% off."""

    name = "wrong-poisson"

    def exact(self, x):
        return 1.05 * super().exact(x)


class LeavesTheBox(UniformSampler):
    """Uniform points shifted past the upper bound of the box."""

    def _draw_unit(self, n):
        return super()._draw_unit(n) + 1.5


def _sampler(cls):
    def build(options, ctx):
        problem = ctx.component("residual")
        return cls(problem.lower, problem.upper, options.n, ctx.seed + options.seed_offset)

    return build


class Planted:
    """A plugin with each faulty component and its faultless twin."""

    @hookimpl
    def phasetrain_components(self):
        return [
            Component("optimizer", "forgetful", _sgd(ForgetfulSGD), MomentumOptions),
            Component("optimizer", "momentum", _sgd(torch.optim.SGD), MomentumOptions),
            Component("offload", "loses-a-tensor", LosesATensor, HostOptions),
            Component("offload", "to-host", ToHost, HostOptions),
            residual_component(WrongPoisson, Poisson2DOptions),
            Component("sampler", "leaves-the-box", _sampler(LeavesTheBox), StaticSamplerOptions),
            Component("sampler", "inside", _sampler(UniformSampler), StaticSamplerOptions),
        ]


PLANTED = Planted()


def _violation(contract, name, **settings):
    with pytest.raises(ContractViolation) as caught:
        contract(name, plugins=[PLANTED], **settings)
    return caught.value


def test_an_optimizer_that_drops_its_state_on_restore_breaks_state_round_trip():
    error = _violation(optimizer.state_round_trip, "forgetful", examples=3)
    assert str(error).startswith("optimizer.state_round_trip: optimizer 'forgetful'")
    assert "state_dict.state.0: missing after the round trip" in str(error)
    assert error.contract == "optimizer.state_round_trip"
    optimizer.state_round_trip("momentum", plugins=[PLANTED], examples=3)  # the same without the fault


def test_an_offload_that_loses_a_tensor_breaks_identity():
    error = _violation(offload.identity, "loses-a-tensor", examples=2)
    assert str(error).startswith("offload.identity: offload 'loses-a-tensor'")
    assert "missing after the round trip" in str(error)
    offload.identity("to-host", plugins=[PLANTED], examples=2)


def test_a_residual_whose_exact_solution_is_wrong_breaks_exact_solution():
    error = _violation(pinn.exact_solution, "wrong-poisson", examples=3)
    assert str(error).startswith("residual.exact_solution: residual 'wrong-poisson'")
    assert "exceeds the problem's tolerance" in str(error)
    pinn.exact_solution("poisson2d", examples=3)


def test_a_sampler_that_leaves_the_domain_breaks_inside_domain():
    error = _violation(pinn.inside_domain, "leaves-the-box", examples=3)
    assert str(error).startswith("sampler.inside_domain: sampler 'leaves-the-box'")
    assert "lies outside the box" in str(error)
    pinn.inside_domain("inside", plugins=[PLANTED], examples=3)


def test_a_failure_carries_its_minimal_example():
    error = _violation(optimizer.state_round_trip, "forgetful", examples=3)
    notes = "\n".join(getattr(error, "__notes__", []))
    assert "Draw 1 (options): MomentumOptions(lr=0.05, momentum=0.9)" in notes  # the defaults fail first


def test_check_component_runs_every_contract_and_names_each_broken_one():
    with pytest.raises(ContractViolation) as caught:
        check_component("optimizer", "forgetful", plugins=[PLANTED], examples=2)
    report = caught.value.report
    assert [o.contract for o in report.outcomes] == [c.name for c in phasetrain.testing.contracts_for("optimizer")]
    assert "optimizer.state_round_trip" in report.names("failed")
    assert "optimizer.lowers_quadratic" in report.names("passed")
    assert str(caught.value).startswith(report.failures[0].contract + ": ")
    for other in report.failures[1:]:
        assert f"- {other.contract}: " in str(caught.value)


def test_check_component_passes_a_sound_component_and_reports_each_contract():
    report = check_component("sampler", "inside", plugins=[PLANTED], examples=2, only=["sampler.inside_domain", "sampler.count"])
    assert report.passed and report.names("passed") == ["sampler.inside_domain", "sampler.count"]
    assert "sampler.count" in str(report)


def test_bad_requests_are_clear_errors():
    with pytest.raises(BadInput, match="no contracts for kind 'task'"):
        check_component("task", "regression")
    with pytest.raises(BadInput, match="unknown setting 'exmaples'"):
        check_component("optimizer", "adam", exmaples=2)
    with pytest.raises(BadInput, match="unknown optimizer 'adma'"):
        check_component("optimizer", "adma")
    with pytest.raises(BadInput, match="has no contract 'optimizer.nope'"):
        check_component("optimizer", "adam", only=["optimizer.nope"])


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------

BUILTIN = Registry(discover(autoload=False))
OPTION_CLASSES = sorted({c.component.config for c in BUILTIN.components()}, key=lambda c: c.__qualname__)


@QUICK
@given(data=st.data())
def test_drawn_options_are_valid_and_survive_the_config_converter(data):
    from phasetrain.config import converter_for

    cls = data.draw(st.sampled_from(OPTION_CLASSES), label="class")
    options = data.draw(strategies.options(cls, registry=BUILTIN), label="options")
    if attrs.has(cls):
        attrs.validate(options)
    converter = converter_for(BUILTIN)
    assert converter.structure(converter.unstructure(options, cls), cls) == options


@attrs.define
class Bounded:
    rate: float = attrs.field(default=0.5, validator=probability)
    count: int = attrs.field(default=3, validator=positive)
    steps: int = attrs.field(default=0, validator=non_negative)
    mode: str = attrs.field(default="a", validator=one_of("a", "b"))
    band: float = attrs.field(default=2.0, validator=in_range(1.0, 3.0))
    odd: int = attrs.field(default=1)
    pair: tuple[float, float] = (0.1, 0.2)

    @odd.validator
    def _odd(self, attribute, value):
        if value % 2 == 0:
            raise FieldValueError(attribute.name, "must be odd")


@QUICK
@given(options=strategies.options(Bounded))
def test_drawn_values_respect_declared_bounds_and_custom_validators(options):
    assert 0 <= options.rate <= 1 and options.count >= 1 and options.steps >= 0
    assert options.mode in ("a", "b") and 1.0 <= options.band <= 3.0
    assert options.odd % 2 == 1 and isinstance(options.pair, tuple) and len(options.pair) == 2


def test_validators_declare_what_they_allow():
    assert validator_allows(positive) == {"low": 0, "low_open": True}
    assert validator_allows(in_range(1, 2)) == {"low": 1, "high": 2}
    assert validator_allows(one_of("x", "y")) == {"choices": ("x", "y")}
    assert validator_allows(attrs.validators.and_(attrs.validators.ge(2), attrs.validators.lt(5))) == {
        "low": 2, "low_open": False, "high": 5, "high_open": True}


@QUICK
@given(data=st.data())
def test_points_in_box_stay_inside(data):
    lower = data.draw(st.lists(st.floats(-5, 5), min_size=1, max_size=3))
    upper = [lo + data.draw(st.floats(0.1, 5)) for lo in lower]
    points = data.draw(strategies.points_in_box(lower, upper))
    assert points.dtype == torch.float64 and points.shape[1] == len(lower)
    assert bool(((points >= torch.tensor(lower, dtype=torch.float64)) & (points <= torch.tensor(upper, dtype=torch.float64))).all())


@QUICK
@given(params=strategies.parameter_sets(), model=strategies.models())
def test_parameter_sets_and_models_are_small_and_usable(params, model):
    assert 1 <= len(params) <= 3 and len({p.dtype for p in params}) == 1
    assert all(isinstance(p, torch.nn.Parameter) and p.is_floating_point() and p.numel() <= 16 for p in params)
    first = next(model.parameters())
    out = model(torch.zeros(5, first.shape[1]))
    assert out.shape[0] == 5 and bool(torch.isfinite(out).all())


@QUICK
@given(data=st.data())
def test_trajectories_follow_the_tensors_they_are_drawn_for(data):
    params = data.draw(strategies.parameter_sets(), label="params")
    trajectory = data.draw(strategies.trajectories(params), label="trajectory")
    assert 2 <= len(trajectory) <= 12
    for step in trajectory:
        assert step.event in ("observe", "rebase", "penalize") and step.loss >= 0 and step.lr > 0
        assert [(d.shape, d.dtype) for d in step.delta] == [(p.shape, p.dtype) for p in params]
        assert all(bool(torch.isfinite(d).all()) for d in step.delta)


@QUICK
@given(quadratic=strategies.quadratics())
def test_quadratics_start_away_from_their_minimum(quadratic):
    assert quadratic.loss(quadratic.target) == 0
    for start, target in zip(quadratic.start, quadratic.target):
        assert bool(((start - target).abs() >= 0.5 - 1e-6).all())


@QUICK
@given(states=strategies.optimizer_states())
def test_optimizer_states_survive_a_checkpoint_bit_for_bit(states):
    assert differences(states, through_checkpoint(states)) == []


# ---------------------------------------------------------------------------------------------
# Bit-for-bit comparison
# ---------------------------------------------------------------------------------------------


@QUICK
@given(states=strategies.optimizer_states(), data=st.data())
def test_differences_find_any_flipped_bit(states, data):
    copies = [{k: clone(v) for k, v in s.items()} for s in states]
    assert differences(states, copies) == []
    places = [(i, k) for i, s in enumerate(states) for k, v in s.items() if isinstance(v, torch.Tensor) and v.numel()]
    if not places:
        return
    i, k = data.draw(st.sampled_from(places), label="tensor")
    changed = copies[i][k].contiguous().clone()
    changed.reshape(-1).view(torch.uint8)[0] ^= 1  # the lowest bit of the first element
    copies[i][k] = changed
    assert any(line.startswith(f"[{i}].{k}:") for line in differences(states, copies))


def test_differences_treat_nan_as_nan_and_skip_volatile_keys():
    nan = torch.tensor([math.nan, 1.0])
    assert differences({"a": nan}, {"a": nan.clone()}) == []
    assert differences({"a": torch.tensor([0.0])}, {"a": torch.tensor([-0.0])}) != []
    assert differences({"time": 1.0, "x": 1}, {"time": 2.0, "x": 1}) == []
    assert differences({"x": 1}, {"x": 2}) == ["x: 1 vs 2"]


# ---------------------------------------------------------------------------------------------
# Hook recorder and the pytest plugin
# ---------------------------------------------------------------------------------------------


@settings(max_examples=5, deadline=None)
@given(steps=st.integers(1, 5), eval_every=st.integers(0, 3), checkpoint_every=st.integers(0, 3), split=st.integers(1, 4))
def test_the_recorder_sees_the_order_the_hook_contract_promises(tmp_path_factory, steps, eval_every, checkpoint_every, split):
    from phasetrain.testing.context import short_run

    recorder = HookRecorder()
    stages = f"schedule={{use='staged', stages=[{{name='a', steps={split}}}, {{name='b'}}]}}"
    short_run("regression", [f"run.eval_every={eval_every}", f"run.checkpoint_every={checkpoint_every}", stages,
                             "task.n_train=64", "task.hidden=8", "run.device='cpu'"],
              out_dir=tmp_path_factory.mktemp("run"), steps=steps, plugins=[recorder])
    phases = [("a", 0)] + ([("b", split)] if split < steps else [])
    assert recorder.events == expected_events(steps, eval_every=eval_every, checkpoint_every=checkpoint_every, phases=phases)
    assert len(recorder.losses) == steps and all(math.isfinite(x) for x in recorder.losses)


def test_the_pytest_plugin_loads_without_torch_or_hypothesis():
    code = "import sys, phasetrain.testing.pytest_plugin; print(sorted({'torch', 'hypothesis'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up
def test_the_pytest_plugin_offers_fixtures_and_the_component_marker(tmp_path):
    (tmp_path / "test_plugin_use.py").write_text(textwrap.dedent('''
        import attrs, pytest, torch
        from phasetrain import Component, hookimpl

        @attrs.define
        class Options:
            lr: float = 0.05

        class Forgetful(torch.optim.SGD):
            def load_state_dict(self, state_dict):
                super().load_state_dict({**state_dict, "state": {}})

        class Plugin:
            @hookimpl
            def phasetrain_components(self):
                return [Component("optimizer", "forgetful",
                                  lambda o, ctx: Forgetful(ctx.params, lr=o.lr, momentum=0.9), Options)]

        def test_fixtures(short_run, hook_recorder, phasetrain_plugin_manager):
            assert phasetrain_plugin_manager.get_plugins()
            trainer = short_run(steps=2, plugins=[hook_recorder], overrides=["task.n_train=64", "task.hidden=8"])
            assert trainer.outcome.status == "completed"
            assert hook_recorder.names()[:3] == ["train_start", "phase_enter", "pre_step"]

        @pytest.mark.phasetrain_component("optimizer", "adam", only=["optimizer.closure"], examples=2)
        def test_adam_conforms():
            pass

        @pytest.mark.phasetrain_component("optimizer", "forgetful", only=["optimizer.state_round_trip"],
                                          examples=2, plugins=[Plugin()])
        def test_forgetful_conforms():
            pass
    '''))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_plugin_use.py")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )
    assert "1 failed, 2 passed" in result.stdout, result.stdout[-3000:]
    assert "FAILED test_plugin_use.py::test_forgetful_conforms" in result.stdout
    assert "optimizer.state_round_trip: optimizer 'forgetful'" in result.stdout


def test_the_guide_names_every_contract_and_setting():
    from phasetrain.testing import CONTRACTS, Settings
    from phasetrain.testing.kit import load_contracts

    load_contracts(Registry(discover(autoload=False)))
    guide = (ROOT / "docs" / "testing-plugins.md").read_text()
    for name in [n for n, c in CONTRACTS.items() if c.body.__module__.startswith("phasetrain.")]:
        assert f"| `{name}` |" in guide, f"docs/testing-plugins.md does not describe {name}"
    for field in attrs.fields(Settings):
        assert f"| `{field.name}` |" in guide, f"docs/testing-plugins.md does not describe the setting {field.name}"
