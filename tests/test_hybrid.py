"""Hybrid predictive training: phase rules, no backward in Predict, rollback, resume."""

from __future__ import annotations

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import phasetrain
from phasetrain import Component, hookimpl
from phasetrain.plugins.hybrid.schedule import HybridController, HybridOptions
from phasetrain.plugins.tasks.regression import Regression, RegressionOptions
from phasetrain.registry import plugin

# -- the rules, on synthetic sequences ------------------------------------------------------------

options_strategy = st.builds(
    HybridOptions,
    warmup_steps=st.integers(0, 10), min_full_steps=st.integers(0, 5),
    confidence_threshold=st.floats(0.0, 1.0), initial_predict_steps=st.integers(1, 6),
    max_predict_steps=st.integers(1, 12), loss_check_every=st.integers(1, 4),
    abort_tolerance=st.floats(0.0, 0.2), correct_steps=st.integers(1, 5),
    rollback_tolerance=st.floats(0.0, 0.2),
)


@settings(max_examples=300, deadline=None)
@given(options=options_strategy, total=st.integers(1, 80), data=st.data())
def test_phase_transitions_follow_the_rules(options, total, data):
    c = HybridController(options, total)
    confidences = data.draw(st.lists(st.floats(0.0, 1.0), min_size=total, max_size=total))
    losses = data.draw(st.lists(st.floats(0.1, 2.0), min_size=total, max_size=total))
    phases, budgets = [], []
    for step in range(total):
        before = c.phase
        phase = c.next_phase(step, confidences[step])
        if phase != before:  # a transition happened now
            assert (before, phase) in {("warmup", "full"), ("full", "predict"), ("predict", "correct"),
                                       ("correct", "predict"), ("correct", "full")}
            if phase == "predict":
                assert confidences[step] >= options.confidence_threshold
                assert total - step - options.correct_steps >= 1  # room to predict and correct
                if before == "full":
                    assert phases.count("full") >= options.min_full_steps
            if before == "predict":
                c.judged(losses[step], 1.0)
        if phase == "predict":
            budgets.append(c.budget)
            if (c.phase_step + 1) % options.loss_check_every == 0:
                c.check(losses[step], 1.0)
        phases.append(phase)
        c.stepped()
        assert 1 <= c.budget <= options.max_predict_steps
    assert all(p == "warmup" for p in phases[: options.warmup_steps])
    # every predicted stretch is at most the budget and is followed by a correction
    run, stretches = 0, []
    for p in phases + ["end"]:
        if p == "predict":
            run += 1
        elif run:
            stretches.append((run, p))
            run = 0
    for length, after in stretches:
        assert length <= options.max_predict_steps
        assert after in ("correct", "end")


# -- running ---------------------------------------------------------------------------------------


def hybrid(quiet, *extra, plugins=()):
    return phasetrain.Trainer.from_config(
        "regression",
        [*quiet, "run.steps=60", "schedule={use='hybrid', warmup_steps=10, min_full_steps=5, "
         "confidence_threshold=0.0, initial_predict_steps=4, correct_steps=4}", "dynamics={use='linear', window=3}",
         *extra],
        plugins=list(plugins),
    )


class BackwardCounter:
    """Counts backward passes through the parameters, per phase."""

    def __init__(self):
        self.by_phase = {}
        self.phase = None

    @hookimpl
    def train_start(self, trainer):
        for p in trainer.model.parameters():
            p.register_hook(self._count)

    def _count(self, grad):
        self.by_phase[self.phase] = self.by_phase.get(self.phase, 0) + 1
        return grad

    @hookimpl
    def pre_step(self, trainer):
        self.phase = trainer.schedule.controller.phase


def test_predicted_steps_run_no_backward_and_take_no_data(quiet):
    counter = BackwardCounter()
    trainer = hybrid(quiet, plugins=[counter])
    trainer.fit()
    schedule = trainer.schedule
    assert schedule.predicted_steps > 0
    assert counter.by_phase.get("predict", 0) == 0
    assert counter.by_phase["full"] > 0 and counter.by_phase["correct"] > 0
    assert trainer.state.batches == schedule.real_steps  # one micro-batch per real step only


def test_confidence_forced_to_zero_is_bitwise_plain_training(quiet):
    plain = phasetrain.Trainer.from_config("regression", [*quiet, "run.steps=60"])
    plain.fit()
    quiet = [*quiet, f"run.out_dir='{plain.out_dir}-hybrid'"]  # a directory of its own
    never = hybrid(quiet, "schedule.force_confidence=0.0", "schedule.confidence_threshold=0.5")
    never.fit()
    assert never.schedule.predicted_steps == 0
    for a, b in zip(plain.model.parameters(), never.model.parameters(), strict=True):
        assert torch.equal(a, b)


@attrs.define
class WildOptions:
    size: float = 10.0


class Wild:
    """A dynamics model that is always confident and always wrong."""

    confidence = 1.0

    def __init__(self, options, ctx):
        self.size = options.size

    def observe(self, params, loss, lr):
        pass

    def rebase(self, params):
        pass

    def predict(self, params, lr):
        return [torch.full_like(p, self.size) for p in params]

    def predicted_loss(self, k):
        return 0.0

    def penalize(self, factor):
        pass


class WildProvider:
    @hookimpl
    def phasetrain_components(self):
        return [Component("dynamics", "wild", Wild, WildOptions)]


class SnapshotWatch:
    def __init__(self):
        self.entry = None
        self.after_rollback = None

    @hookimpl(trylast=True)
    def phase_enter(self, trainer, phase, previous):
        if phase.name == "predict" and self.entry is None:
            self.entry = [p.detach().clone() for p in trainer.trainable]
        elif phase.name == "correct" and self.after_rollback is None and trainer.schedule.rollbacks:
            self.after_rollback = [p.detach().clone() for p in trainer.trainable]


def test_a_bad_prediction_is_rolled_back_to_the_exact_snapshot(quiet):
    watch = SnapshotWatch()
    trainer = hybrid(quiet, "dynamics={use='wild'}", "schedule.loss_check_every=100",
                     plugins=[plugin(WildProvider(), "wild", "wild-dist"), watch])
    trainer.fit()
    assert trainer.schedule.rollbacks >= 1
    for a, b in zip(watch.entry, watch.after_rollback, strict=True):
        assert torch.equal(a, b)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_loss_checks_abort_a_bad_predicted_stretch_early(quiet):
    trainer = hybrid(quiet, "dynamics={use='wild'}", "schedule.loss_check_every=1",
                     plugins=[plugin(WildProvider(), "wild", "wild-dist")])
    trainer.fit()
    assert trainer.schedule.aborts >= 1
    assert trainer.schedule.predicted_steps <= trainer.schedule.aborts + trainer.schedule.rollbacks + 4


class StopInPredict:
    def __init__(self):
        self.stopped_at = None

    @hookimpl
    def post_step(self, trainer, step, metrics):
        if self.stopped_at is None and not trainer.phase.real and trainer.schedule.controller.phase_step == 2:
            self.stopped_at = step + 1
            trainer.stop_requested = True


@pytest.mark.parametrize("dynamics", ["linear", "linefit"])
def test_resume_mid_predict_continues_identically(quiet, tmp_path, dynamics):
    args = [a for a in quiet if "out_dir" not in a]
    # linefit: snapshots every 3 steps, so that it predicts in a short run
    model = "dynamics={use='linear', window=3}" if dynamics == "linear" else "dynamics={use='linefit', every=3, snapshots=3}"
    whole = hybrid([*args, f"run.out_dir='{tmp_path / 'a'}'"], model)
    whole.fit()
    assert whole.schedule.predicted_steps > 0 and whole.schedule.dynamics.kind == dynamics
    stopper = StopInPredict()
    first = hybrid([*args, f"run.out_dir='{tmp_path / 'b'}'"], model, plugins=[stopper])
    first.fit()
    assert stopper.stopped_at is not None and first.schedule.controller.phase == "predict"
    second = hybrid([*args, f"run.out_dir='{tmp_path / 'b'}'"], model)
    second.resume(report=lambda _m: None)
    second.fit()
    assert second.schedule.predicted_steps == whole.schedule.predicted_steps
    assert second.schedule.rollbacks == whole.schedule.rollbacks
    for a, b in zip(whole.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_hybrid_without_dynamics_is_a_clear_error(quiet):
    import pytest

    from phasetrain.errors import BadInput

    with pytest.raises(BadInput, match="needs a \\[dynamics\\] section"):
        phasetrain.Trainer.from_config("regression", [*quiet, "run.steps=5", "schedule={use='hybrid'}"])


@pytest.mark.parametrize("dynamics", ["linear", "linefit", "nowcaster"])
def test_dynamics_predictions_fit_the_parameters_and_confidence_is_bounded(quiet, dynamics):
    window = "window=3" if dynamics == "linear" else "every=3"
    trainer = hybrid(quiet, f"dynamics={{use='{dynamics}', {window}}}", "run.steps=40")
    trainer.fit()
    model = trainer.schedule.dynamics
    deltas = model.predict(trainer.trainable, 1e-3)
    assert len(deltas) == len(trainer.trainable)
    for d, p in zip(deltas, trainer.trainable, strict=True):
        assert d.shape == p.shape and d.dtype == p.dtype and torch.isfinite(d).all()
    assert 0.0 <= model.confidence <= 1.0
    import math

    assert math.isfinite(model.predicted_loss(3))


# -- overshoot: back to the best checked point ----------------------------------------------------


class Bowl(Regression):
    """loss = sum over all weights of (w - 0.5)^2, whatever the batch: a known line profile."""

    def loss(self, model, batch):
        return sum(((p - 0.5) ** 2).sum() for p in model.parameters())


class Overshoot(Wild):
    """Walks in steps of 0.3 x (0.5 - weights at stretch entry): along that line the loss is
    (1 - 0.3 k)^2 times the entry loss, lowest at k = 3 and rising after."""

    def __init__(self, options, ctx):
        self.delta = None

    def rebase(self, params):
        self.delta = None

    def predict(self, params, lr):
        if self.delta is None:
            self.delta = [0.3 * (0.5 - p.detach()) for p in params]
        return [d.clone() for d in self.delta]


class BowlProvider:
    @hookimpl
    def phasetrain_components(self):
        return [Component("task", "bowl", Bowl, RegressionOptions),
                Component("dynamics", "overshoot", Overshoot, WildOptions)]


class StretchWatch:
    """Weights after every predicted step of the first stretch, and at the following Correct."""

    def __init__(self):
        self.predicted = []
        self.at_correct = None

    @hookimpl(trylast=True)
    def post_step(self, trainer, step, metrics):
        if not trainer.phase.real and self.at_correct is None:
            self.predicted.append([p.detach().clone() for p in trainer.trainable])

    @hookimpl(trylast=True)
    def phase_enter(self, trainer, phase, previous):
        if phase.name == "correct" and self.at_correct is None:
            self.at_correct = [p.detach().clone() for p in trainer.trainable]


def test_an_overshooting_stretch_returns_to_its_best_checked_point(quiet):
    watch = StretchWatch()
    trainer = hybrid(quiet, "task.use='bowl'", "dynamics={use='overshoot'}", "schedule.loss_check_every=1",
                     "schedule.initial_predict_steps=8", "schedule.max_predict_steps=8",
                     plugins=[plugin(BowlProvider(), "bowl", "bowl-dist"), watch])
    trainer.fit()
    assert len(watch.predicted) == 4  # k = 4 rose above k = 3 by more than abort_tolerance
    assert trainer.schedule.returns >= 1 and trainer.schedule.rollbacks == 0
    for a, b in zip(watch.at_correct, watch.predicted[2], strict=True):  # k = 3, bit for bit
        assert torch.equal(a, b)


# -- PINNs: the loss checks need input derivatives -------------------------------------------------


def test_hybrid_trains_a_pinn_without_backward_in_predict(quiet):
    counter = BackwardCounter()
    trainer = phasetrain.Trainer.from_config(
        "burgers",
        [*quiet, "run.steps=40", "run.eval_every=0", "sampler.n=128", "task.n_initial=32", "task.n_boundary=32",
         "task.hidden=8", "task.depth=2", "task.eval_grid=[16]", "schedule={use='hybrid', warmup_steps=5, "
         "min_full_steps=2, confidence_threshold=0.0, initial_predict_steps=4, correct_steps=3, "
         "loss_check_every=2}", "dynamics={use='linear', window=2}"],
        plugins=[counter],
    )
    outcome = trainer.fit()
    assert trainer.schedule.predicted_steps > 0
    assert counter.by_phase.get("predict", 0) == 0 and counter.by_phase.get("full", 0) > 0
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in trainer.model.parameters())
    assert all(p.requires_grad for p in trainer.model.parameters())  # the loss checks gave them back
    assert outcome.eval["eval_loss"] == outcome.eval["eval_loss"]  # finite, not NaN


def test_every_rollback_is_an_event_in_the_console_and_the_metrics_file(tmp_path, capsys):
    import json

    trainer = hybrid([f"run.out_dir='{tmp_path / 'run'}'", "run.device='cpu'"], "dynamics={use='wild'}",
                     "schedule.loss_check_every=100", plugins=[plugin(WildProvider(), "wild", "wild-dist")])
    trainer.fit()
    rollbacks = trainer.schedule.rollbacks
    assert rollbacks >= 1
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    events = [r for r in records if r["kind"] == "event"]
    assert [r["name"] for r in events] == ["rollback"] * rollbacks
    assert [r["rollbacks"] for r in events] == list(range(1, rollbacks + 1))
    assert all(r["probe_loss"] > r["reference"] and r["phase"] == "correct" for r in events)
    assert capsys.readouterr().out.count("hybrid: rollback") == rollbacks


def test_rollback_events_reach_tensorboard(quiet, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = hybrid(quiet, "dynamics={use='wild'}", "schedule.loss_check_every=100",
                     "observers.tensorboard={hparams=false}", plugins=[plugin(WildProvider(), "wild", "wild-dist")])
    trainer.fit()
    acc = EventAccumulator(str(trainer.out_dir / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    assert "events/rollback/text_summary" in acc.Tags()["tensors"]
    assert len(acc.Tensors("events/rollback/text_summary")) == trainer.schedule.rollbacks >= 1


def pinn_hybrid(out, *extra, plugins=()):
    return phasetrain.Trainer.from_config(
        "burgers",
        [f"run.out_dir='{out}'", "observers.console.quiet=true", "run.device='cpu'", "run.steps=40",
         "run.eval_every=0", "task.n_initial=32", "task.n_boundary=32", "task.hidden=8", "task.depth=2",
         "task.eval_grid=[16]", "sampler={use='rad', n=128, every=5}",
         "schedule={use='hybrid', warmup_steps=5, min_full_steps=2, confidence_threshold=0.0, "
         "initial_predict_steps=6, max_predict_steps=6, correct_steps=3, loss_check_every=1}",
         "dynamics={use='linear', window=2}", *extra],
        plugins=list(plugins),
    )


def test_resume_of_a_pinn_hybrid_run_with_loss_checks_and_rad_continues_identically(tmp_path):
    whole = pinn_hybrid(tmp_path / "a")
    whole.fit()
    assert whole.schedule.predicted_steps > 0
    stopper = StopInPredict()
    first = pinn_hybrid(tmp_path / "b", plugins=[stopper])
    first.fit()
    assert stopper.stopped_at is not None and first.schedule.controller.phase == "predict"
    second = pinn_hybrid(tmp_path / "b")
    second.resume(report=lambda _m: None)
    second.fit()
    s, w = second.schedule, whole.schedule
    assert (s.predicted_steps, s.rollbacks, s.returns) == (w.predicted_steps, w.rollbacks, w.returns)
    assert torch.equal(second.task.points, whole.task.points)
    for a, b in zip(whole.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(a, b)


class PointsWatch:
    """The step of every change of the collocation points, and the phase it happened in."""

    def __init__(self):
        self.changes = []
        self._last = None

    @hookimpl(trylast=True)
    def post_step(self, trainer, step, metrics):
        points = trainer.task.points
        if self._last is not None and not torch.equal(points, self._last):
            self.changes.append((step, not trainer.phase.real))
        self._last = points.clone()


def test_adaptive_samplers_do_not_move_points_inside_a_predicted_stretch(tmp_path):
    watch = PointsWatch()
    trainer = pinn_hybrid(tmp_path / "a", "sampler.every=2", plugins=[watch])
    trainer.fit()
    assert trainer.schedule.predicted_steps > 0
    assert watch.changes and not any(predicted for _, predicted in watch.changes)
    assert trainer.task.sampler.num_updates == len(watch.changes)
