"""Precision policies: dtypes, autocast, fp16 loss scaling and its checkpoint, per-phase policies."""

from __future__ import annotations

import math

import pytest
import torch

import phasetrain
from phasetrain import hookimpl
from phasetrain.errors import BadInput, ConfigError

from .conftest import StopAt

SMALL = ["task.n_train=256", "task.n_eval=128", "task.hidden=16", "task.batch_size=32", "optimizer.lr=3e-3"]
STAGED = "schedule={{use='staged', stages=[{{name='adam', steps={a}}}, {{name='{second}'}}]}}"


class Metrics:
    """Keeps every step's metrics, as a logger would see them (trylast)."""

    def __init__(self):
        self.steps = []

    @hookimpl(trylast=True)
    def post_step(self, metrics):
        self.steps.append(dict(metrics))


class ForwardDtypes:
    """Records the dtype of the first layer's output at every forward pass but evaluation's
    (training steps, and the hybrid schedule's probes, which run in eval mode)."""

    def __init__(self):
        self.seen = []
        self.evaluating = False

    @hookimpl
    def train_start(self, trainer):
        first = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Linear))
        def record(module, _inputs, out):
            if not self.evaluating:  # evaluation runs outside the policy's autocast
                self.seen.append((trainer.state.phase, out.dtype))

        first.register_forward_hook(record)

    @hookimpl
    def eval_start(self):
        self.evaluating = True

    @hookimpl
    def eval_end(self):
        self.evaluating = False


def trainer(quiet, *overrides, plugins=()):
    return phasetrain.Trainer.from_config("regression", [*quiet, *SMALL, *overrides], plugins=list(plugins))


@pytest.mark.parametrize(
    "precision, param_dtype, forward_dtype",
    [
        ("fp32", torch.float32, torch.float32),
        ("fp64", torch.float64, torch.float64),
        ("bf16", torch.float32, torch.bfloat16),
        ("fp16", torch.float32, torch.float16),
    ],
)
def test_each_policy_trains_with_its_parameter_and_compute_dtypes(quiet, precision, param_dtype, forward_dtype):
    seen = ForwardDtypes()
    t = trainer(quiet, "run.steps=25", f"precision={precision}", plugins=[seen])
    first = t.evaluate()["eval_loss"]
    outcome = t.fit()
    assert math.isfinite(outcome.metrics["loss"])
    assert outcome.eval["eval_loss"] < first
    assert {p.dtype for p in t.model.parameters()} == {param_dtype}  # master weights
    assert t.task.x_train.dtype == param_dtype  # inputs built in the policy's dtype
    assert {dtype for _phase, dtype in seen.seen} == {forward_dtype}
    assert t.precision.handles_overflow is (precision == "fp16")


def test_fp16_skips_an_overflowing_step_backs_off_and_then_trains(quiet):
    # With a loss scale of 2**30 the float16 gradients overflow: the scaler must skip those
    # steps (weights untouched), halve the scale each time, and train once the scale fits.
    class AfterFirst:
        @hookimpl
        def post_step(self, step, trainer):
            if step == 0:
                self.weights = [p.detach().clone() for p in trainer.model.parameters()]

    metrics, after_first = Metrics(), AfterFirst()
    t = trainer(quiet, "run.steps=40", "precision={use='fp16', init_scale=1073741824.0}",
                plugins=[metrics, after_first])
    initial = [p.detach().clone() for p in t.model.parameters()]
    first_eval = t.evaluate()["eval_loss"]
    outcome = t.fit()
    assert all(torch.equal(a, b) for a, b in zip(initial, after_first.weights, strict=True))
    scales = [m["loss_scale"] for m in metrics.steps]
    assert scales[0] == 2.0**29
    skipped = sum(1 for a, b in zip([2.0**30, *scales], scales, strict=False) if b < a)
    assert skipped == t.precision.skipped_steps
    assert 1 <= skipped < 40
    assert scales[-1] < 2.0**20  # it backed off far enough to train
    assert not any(m.get("nonfinite") for m in metrics.steps)  # overflow is the scaler's business
    assert outcome.eval["eval_loss"] < first_eval


def test_fp16_skips_a_step_with_an_injected_infinite_gradient(quiet):
    t = trainer(quiet, "run.steps=1", "precision=fp16")
    scale = t.precision.scaler.get_scale()
    before = [p.detach().clone() for p in t.model.parameters()]
    first = next(t.model.parameters())
    first.register_hook(lambda g: torch.full_like(g, math.inf))
    t.fit()
    assert t.precision.skipped_steps == 1
    assert t.precision.scaler.get_scale() == scale * 0.5
    assert all(torch.equal(a, b) for a, b in zip(before, t.model.parameters(), strict=True))


def test_fp16_scaler_state_survives_checkpoint_and_resume_bitwise(quiet, tmp_path):
    # growth_interval=3 makes the scale move during the run; the resumed run must match.
    common = [*quiet, *SMALL, "run.steps=14", "precision={use='fp16', init_scale=1048576.0, growth_interval=3}"]
    whole = phasetrain.Trainer.from_config("regression", common)
    whole.fit()
    saved = phasetrain.load_checkpoint(whole.out_dir)["plugins"]["precision"]
    assert saved["scaler"] == whole.precision.scaler.state_dict()
    other = [*common, f"run.out_dir='{tmp_path / 'b'}'"]
    first = phasetrain.Trainer.from_config("regression", other, plugins=[StopAt(6)])
    first.fit()
    resumed = phasetrain.Trainer.from_config("regression", other)
    resumed.resume(report=lambda _m: None)
    assert resumed.precision.scaler.state_dict() == first.precision.scaler.state_dict()
    resumed.fit()
    assert resumed.precision.scaler.state_dict() == whole.precision.scaler.state_dict()
    assert resumed.precision.skipped_steps == whole.precision.skipped_steps
    for a, b in zip(whole.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_fp16_refuses_lbfgs_before_the_first_step(quiet):
    t = phasetrain.Trainer.from_config("regression-lbfgs", [*quiet, "run.steps=20", "precision=fp16"])
    with pytest.raises(BadInput, match="phase 'lbfgs'.*cannot drive L-BFGS"):
        t.fit()
    assert t.step == 0


def test_fp16_step_refuses_a_closure_optimizer_the_start_check_could_not_see(quiet):
    t = trainer(quiet, "run.steps=1", "precision=fp16")
    from phasetrain.plugins.optimizers import LBFGS

    lbfgs = LBFGS(t.model.parameters())
    with pytest.raises(BadInput, match="cannot drive L-BFGS"):
        t.precision.step(lbfgs, lambda: torch.tensor(0.0))


def test_per_phase_runs_lbfgs_in_fp32_after_adam_in_fp16(quiet):
    metrics, seen = Metrics(), ForwardDtypes()
    t = phasetrain.Trainer.from_config(
        "regression-lbfgs",
        [*quiet, "run.steps=8", "task.n_train=256", "precision={use='per_phase', default='fp16', phases={lbfgs='fp32'}}",
         "schedule.stages=[{name='adam', steps=5}, {name='lbfgs', optimizer={use='lbfgs', max_iter=4}}]"],
        plugins=[metrics, seen],
    )
    outcome = t.fit()
    assert math.isfinite(outcome.metrics["loss"])
    assert [("loss_scale" in m) for m in metrics.steps] == [True] * 5 + [False] * 3
    assert {d for phase, d in seen.seen if phase == "adam"} == {torch.float16}
    assert {d for phase, d in seen.seen if phase == "lbfgs"} == {torch.float32}
    assert t.precision.handles_overflow is False  # follows the current phase's policy


def test_per_phase_switches_to_bf16_for_the_named_phase(quiet):
    seen = ForwardDtypes()
    t = trainer(quiet, "run.steps=6", STAGED.format(a=3, second="predict"),
                "precision={use='per_phase', phases={predict='bf16'}}", plugins=[seen])
    t.fit()
    assert [d for _p, d in seen.seen[:3]] == [torch.float32] * 3
    assert {d for p, d in seen.seen if p == "predict"} == {torch.bfloat16}


def test_per_phase_shares_one_scaler_between_identical_fp16_entries(quiet):
    t = trainer(quiet, "run.steps=2", STAGED.format(a=1, second="predict"),
                "precision={use='per_phase', default='fp16', phases={predict='fp16'}}")
    assert t.precision.policy_of("adam") is t.precision.policy_of("predict")


def test_per_phase_rejects_policies_with_different_parameter_dtypes(quiet):
    with pytest.raises(BadInput, match="one\\s+parameter dtype"):
        trainer(quiet, "precision={use='per_phase', default='fp32', phases={lbfgs='fp64'}}")


def test_per_phase_rejects_a_phase_the_schedule_does_not_have(quiet):
    t = trainer(quiet, "run.steps=2", STAGED.format(a=1, second="predict"),
                "precision={use='per_phase', phases={predcit='bf16'}}")
    with pytest.raises(BadInput, match="no phase named 'predcit'.*adam, predict"):
        t.fit()


HYBRID = ["schedule={use='hybrid', warmup_steps=6, min_full_steps=3, confidence_threshold=0.0, "
          "initial_predict_steps=4, correct_steps=3}", "dynamics={use='linear', window=3}"]


def test_per_phase_follows_the_hybrid_schedules_phases(quiet):
    seen = ForwardDtypes()
    t = trainer(quiet, "run.steps=20", *HYBRID, "precision={use='per_phase', phases={predict='bf16'}}", plugins=[seen])
    t.fit()
    assert t.schedule.predicted_steps > 0
    by_phase = {}
    for phase, dtype in seen.seen:
        by_phase.setdefault(phase, set()).add(dtype)
    assert by_phase.pop("predict") == {torch.bfloat16}  # the probe losses of predicted stretches
    assert by_phase and all(dtypes == {torch.float32} for dtypes in by_phase.values())


def test_per_phase_names_the_hybrid_phases_when_one_is_misspelt(quiet):
    t = trainer(quiet, "run.steps=2", *HYBRID, "precision={use='per_phase', phases={prediction='bf16'}}")
    with pytest.raises(BadInput, match="'prediction'.*warmup, full, predict, correct"):
        t.fit()


@pytest.mark.parametrize("field, value", [("growth_factor", "1.0"), ("backoff_factor", "1.0"), ("init_scale", "0.0")])
def test_fp16_options_are_checked_with_their_path(quiet, field, value):
    with pytest.raises(ConfigError, match=f"precision.{field}"):
        trainer(quiet, "precision.use='fp16'", f"precision.{field}={value}")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_the_gpu_keeps_fp32_master_weights(quiet, precision):
    quiet = [q for q in quiet if "run.device" not in q]
    t = trainer(quiet, "run.steps=10", "run.device='cuda'", f"precision={precision}")
    outcome = t.fit()
    assert math.isfinite(outcome.metrics["loss"])
    assert {p.dtype for p in t.model.parameters()} == {torch.float32}
