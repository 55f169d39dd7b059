"""The nowcast schedule: its rules as a pure state machine, the judge, rollback, resume, and the
line fit and the shipped nowcaster behind it."""

from __future__ import annotations

import copy
import math

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import phasetrain
from phasetrain import Component, hookimpl
from phasetrain.errors import BadInput, ConfigError
from phasetrain.plugins.hybrid.nowcast import NowcastController, NowcastOptions, theil_sen
from phasetrain.plugins.hybrid.nowcaster import LearnedNowcaster, NowcasterOptions, build_net, load_weights, nowcast_with
from phasetrain.plugins.hybrid.snapshots import LineFit, LineFitOptions
from phasetrain.registry import plugin

# -- the rules, over numbers only ------------------------------------------------------------------

options_strategy = st.builds(
    NowcastOptions,
    start=st.integers(0, 8), every=st.integers(1, 4), ahead=st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 8.0]),
    max_ahead=st.sampled_from([1.0, 4.0, 8.0]), grow=st.sampled_from([1.0, 1.5, 2.0]),
    settle_steps=st.integers(1, 4), tolerance=st.floats(0.0, 0.1),
)


@settings(max_examples=300, deadline=None)
@given(options=options_strategy, snapshots=st.integers(2, 5), total=st.integers(1, 120), data=st.data())
def test_jumps_follow_the_rules(options, snapshots, total, data):
    c = NowcastController(options, snapshots=snapshots)
    verdicts = iter(data.draw(st.lists(st.booleans(), min_size=total, max_size=total), label="kept"))
    start_ahead = options.ahead
    opened_at, due_steps, phases = None, [], []
    for step in range(total):
        before = c.phase
        ahead_before, stopped_before, taken_before = c.ahead, c.stopped, c.taken
        phase = c.next_phase(step, total)
        if phase == "jump":
            assert before == "train" and not stopped_before
            assert taken_before >= snapshots  # K snapshots of the window are there
            assert step + 1 + options.settle_steps <= total  # the jump and its settling fit
            assert 1 <= c.ahead <= max(options.max_ahead, start_ahead)
        if before == "jump":
            assert phase == "settle"
        phases.append(phase)
        c.stepped()
        if phase == "train":
            due = c.observe(1.0, step + 1)
            if stopped_before:
                assert not due  # after the rule stopped the jumps: no snapshots, no probes
            if due:
                due_steps.append(step)
                if c.since == 0:
                    opened_at = step
                assert (step - opened_at) % options.every == 0  # the window's cadence
        elif phase == "settle" and c.phase_step == options.settle_steps:
            kept = next(verdicts)
            c.judge(1.0 if kept else 2.0, 1.0)
            if kept:
                assert c.ahead == min(options.max_ahead, ahead_before * options.grow)
            else:
                assert c.ahead == ahead_before / 2
                assert c.stopped == (c.ahead < 1)
            if not c.stopped:
                opened_at = step  # a new window opens at the weights after the judgement
    # every jump is followed by exactly settle_steps settling steps (or the end of the run)
    for i, p in enumerate(phases):
        if p == "jump":
            after = phases[i + 1: i + 1 + options.settle_steps]
            assert after == ["settle"] * len(after)
    if start_ahead < 1:  # jumps switched off: not a snapshot, not a probe
        assert c.stopped and "jump" not in phases and not due_steps


@settings(max_examples=100, deadline=None)
@given(options=options_strategy, snapshots=st.integers(2, 5))
def test_jumps_that_never_pay_stop_after_a_few_tries(options, snapshots):
    c = NowcastController(options, snapshots=snapshots)
    jumps = 0
    for step in range(2_000):
        phase = c.next_phase(step, 10**9)
        c.stepped()
        if phase == "jump":
            jumps += 1
        elif phase == "train":
            c.observe(1.0, step + 1)
        elif c.phase_step == options.settle_steps:
            c.judge(2.0, 1.0)
    expected = 0 if options.ahead < 1 else math.floor(math.log2(options.ahead)) + 1
    assert jumps == expected and c.stopped


@settings(max_examples=100, deadline=None)
@given(rate=st.floats(0.9, 1.1), start=st.floats(0.01, 10.0), n=st.integers(8, 80), spike=st.integers(0, 79),
       settle=st.integers(1, 30))
def test_the_no_jump_forecast_follows_the_trend_and_ignores_a_spike(rate, start, n, spike, settle):
    losses = [start * rate**i for i in range(n)]
    c = NowcastController(NowcastOptions(settle_steps=settle), snapshots=2)
    c.losses = list(losses)
    assert c.forecast(2.0) == pytest.approx(2.0 * rate ** (settle + 1), rel=1e-9)
    losses[spike % n] *= 50.0  # one evaluation of an Adam spike
    c.losses = losses
    assert c.forecast(2.0) == pytest.approx(2.0 * rate ** (settle + 1), rel=1e-9)


def test_theil_sen_is_the_slope_of_a_line():
    assert theil_sen([3.0 + 0.5 * i for i in range(40)]) == pytest.approx(0.5)
    assert theil_sen([1.0]) == 0.0


# -- the line fit and the nowcaster ---------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(k=st.integers(2, 8), ahead=st.floats(0.0, 16.0), seed=st.integers(0, 2**16))
def test_linefit_continues_a_straight_trajectory_exactly(k, ahead, seed):
    g = torch.Generator().manual_seed(seed)
    start, slope = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    history = [[start + i * slope] for i in range(k)]
    model = LineFit(LineFitOptions(snapshots=k), None)
    (moved,) = model.nowcast(history, ahead)
    torch.testing.assert_close(moved, ahead * slope, rtol=1e-9, atol=1e-9)


def test_linefit_at_zero_ahead_is_the_fitted_line_through_noise():
    # snapshots alternating +1 / -1: the least-squares line through (0, 1), (1, -1), (2, 1), (3, -1)
    # falls with slope -0.4 through (1.5, 0), so at t = 3 it is at -0.6: the last snapshot moves by 0.4
    history = [[torch.tensor([1.0])], [torch.tensor([-1.0])], [torch.tensor([1.0])], [torch.tensor([-1.0])]]
    (moved,) = LineFit(LineFitOptions(snapshots=4), None).nowcast(history, 0.0)
    assert float(moved) == pytest.approx(0.4)


def test_the_shipped_nowcaster_loads_with_weights_only_and_reproduces_its_recorded_predictions():
    saved = load_weights()  # torch.load(..., weights_only=True)
    net = build_net(saved)
    check = saved["check"]
    for ahead, expected in zip(check["ahead"], check["expected"], strict=True):
        got = nowcast_with(net, check["history"], ahead)
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-8)
    model = LearnedNowcaster(NowcasterOptions(), None)
    assert model.snapshots == saved["snapshots"] == len(check["history"])


class Pickled:
    pass


def test_nowcaster_weights_that_need_unpickling_are_refused(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"snapshots": 5, "hidden": 64, "state": {}, "payload": Pickled()}, path)
    with pytest.raises(BadInput, match="dynamics.weights"):
        LearnedNowcaster(NowcasterOptions(weights=str(path)), None)


def test_the_nowcaster_predicts_no_move_for_weights_that_did_not_move():
    model = LearnedNowcaster(NowcasterOptions(), None)
    still = [[torch.ones(4, 4), torch.zeros(3)] for _ in range(model.snapshots)]
    for d in model.nowcast(still, 4.0):
        assert torch.equal(d, torch.zeros_like(d))


# -- running ---------------------------------------------------------------------------------------

BASE = ["run.steps=200", "run.checkpoint_every=0", "schedule={use='nowcast', start=10, every=5, settle_steps=5}"]


def nowcast_run(quiet, *extra, plugins=()):
    return phasetrain.Trainer.from_config("regression", [*quiet, *BASE, "dynamics={use='linefit'}", *extra],
                                          plugins=list(plugins))


@attrs.define
class ScriptedOptions:
    good: int = 0  # the first `good` jumps do not move the weights; every later one is huge


class Scripted:
    """A nowcaster whose first jumps stand still and whose later jumps make the loss infinite."""

    snapshots = 3
    confidence = 0.0

    def __init__(self, options, ctx):
        self.good, self.calls = options.good, 0

    def nowcast(self, history, ahead):
        self.calls += 1
        return [torch.zeros_like(p) if self.calls <= self.good else torch.full_like(p, 1e30) for p in history[-1]]

    def observe(self, params, loss, lr):
        pass

    def rebase(self, params):
        pass

    def predict(self, params, lr):
        return [torch.zeros_like(p) for p in params]

    def predicted_loss(self, k):
        return 0.0

    def penalize(self, factor):
        pass


class ScriptedProvider:
    @hookimpl
    def phasetrain_components(self):
        return [Component("dynamics", "scripted", Scripted, ScriptedOptions)]


SCRIPTED = plugin(ScriptedProvider(), "scripted", "scripted-dist")


class Judgements:
    """Every judgement (event), the weights before each jump, and the weights right after each
    rollback."""

    def __init__(self):
        self.events, self.before_jump, self.after_rollback = [], [], []
        self._pending = False

    @hookimpl
    def event(self, name, fields):
        if name.startswith("jump_"):
            self.events.append((name, dict(fields)))
            self._pending = name == "jump_rolled_back"

    @hookimpl(trylast=True)
    def phase_enter(self, trainer, phase):
        if phase.name == "jump":
            self.before_jump.append([p.detach().clone() for p in trainer.trainable])

    @hookimpl
    def restore(self, trainer):
        if self._pending:
            self.after_rollback.append([p.detach().clone() for p in trainer.trainable])
            self._pending = False


@pytest.mark.parametrize("dynamics", ["linefit", "nowcaster"])
def test_a_kept_jump_is_never_worse_than_the_no_jump_forecast_and_a_lost_one_is_undone_exactly(quiet, dynamics):
    judged = Judgements()
    extra = ["schedule.every=3"] if dynamics == "nowcaster" else []
    trainer = nowcast_run(quiet, f"dynamics={{use='{dynamics}'}}", "run.steps=300", "schedule.tolerance=0.01", *extra,
                          plugins=[judged])
    trainer.fit()
    assert judged.events, "no jump was judged"
    rolled = 0
    for name, f in judged.events:
        if name == "jump_kept":
            assert f["probe_loss"] <= f["forecast"] + 0.01 * abs(f["forecast"])
        else:
            assert not f["probe_loss"] <= f["forecast"] + 0.01 * abs(f["forecast"])
            rolled += 1
    assert rolled == trainer.schedule.rollbacks == len(judged.after_rollback)
    rolled_back = [i for i, (name, _) in enumerate(judged.events) if name == "jump_rolled_back"]
    for i, after in zip(rolled_back, judged.after_rollback, strict=True):
        for a, b in zip(judged.before_jump[i], after, strict=True):
            assert torch.equal(a, b)


def test_when_every_jump_loses_the_run_is_bitwise_plain_training(quiet, tmp_path):
    plain = phasetrain.Trainer.from_config("regression", [*quiet, f"run.out_dir='{tmp_path / 'plain'}'",
                                                          "run.steps=200", "run.checkpoint_every=0",
                                                          "lr_schedule={use='wsd', decay_fraction=0.3}"])
    plain.fit()
    lost = nowcast_run(quiet, "dynamics={use='scripted'}", "lr_schedule={use='wsd', decay_fraction=0.3}",
                       "schedule.ahead=4", plugins=[SCRIPTED])
    lost.fit()
    s = lost.schedule
    assert s.controller.jumps == s.rollbacks == 3 and s.controller.stopped  # 4 -> 2 -> 1 -> 0.5: stop
    assert lost.state.batches == plain.state.batches
    assert lost.lr_scheduler.state_dict() == plain.lr_scheduler.state_dict()
    for a, b in zip(plain.model.parameters(), lost.model.parameters(), strict=True):
        assert torch.equal(a, b)
    for key, state in plain.optimizer.state_dict()["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(lost.optimizer.state_dict()["state"][key][name]))


class StateWhenStopped:
    """The run's state at the first step boundary after the rule stopped the jumps."""

    def __init__(self):
        self.state = None

    @hookimpl(trylast=True)
    def pre_step(self, trainer):
        if self.state is None and trainer.schedule.controller.stopped:
            self.state = copy.deepcopy(trainer.state_dict())


def test_once_the_rule_stops_the_jumps_the_run_continues_as_plain_training_bit_for_bit(quiet, tmp_path):
    watch = StateWhenStopped()
    run = nowcast_run(quiet, "dynamics={use='scripted', good=2}", "schedule.tolerance=1e9", "schedule.ahead=2",
                      "schedule.max_ahead=2", plugins=[SCRIPTED, watch])
    run.fit()
    assert run.schedule.controller.kept == 2 and run.schedule.controller.stopped and watch.state is not None
    plain = phasetrain.Trainer.from_config(
        "regression", [f"run.out_dir='{tmp_path / 'plain'}'", "observers.console.quiet=true", "run.steps=200",
                       "run.checkpoint_every=0"])
    plain.load_state_dict(watch.state)
    plain.fit()
    for a, b in zip(plain.model.parameters(), run.model.parameters(), strict=True):
        assert torch.equal(a, b)


class LearningRates:
    def __init__(self):
        self.by_step = {}

    @hookimpl
    def post_step(self, step, metrics):
        self.by_step[step] = metrics["lr"]  # a rollback replays steps: the surviving branch stays


def test_jumps_do_not_step_the_learning_rate_schedule(quiet, tmp_path):
    plain_lrs, jump_lrs = LearningRates(), LearningRates()
    schedule = "lr_schedule={use='wsd', warmup_steps=10, decay_fraction=0.5}"
    phasetrain.Trainer.from_config("regression", [*quiet, f"run.out_dir='{tmp_path / 'plain'}'", "run.steps=200", schedule],
                                   plugins=[plain_lrs]).fit()
    run = nowcast_run(quiet, schedule, "schedule.tolerance=1e9", plugins=[jump_lrs])
    run.fit()
    assert run.schedule.controller.kept >= 2
    assert jump_lrs.by_step == plain_lrs.by_step


class MomentSpy:
    """Adam's first moments right after the jump moved the weights, before the real step."""

    def __init__(self):
        self.before, self.after = None, None

    @hookimpl(trylast=True)
    def phase_enter(self, trainer, phase):
        if phase.name == "jump" and self.before is None:
            self.before = [trainer.optimizer.state[p]["exp_avg"].clone() for p in trainer.trainable]

    @hookimpl  # older than the schedule's, newer than the kernel's trylast step: runs between them
    def run_step(self, trainer, phase):
        if phase.name == "jump" and self.after is None:
            self.after = [trainer.optimizer.state[p]["exp_avg"].clone() for p in trainer.trainable]


@pytest.mark.parametrize("moments,factor", [("keep", 1.0), ("scale", 0.25)])
def test_moments_at_a_jump_are_kept_or_scaled(quiet, moments, factor):
    spy = MomentSpy()
    nowcast_run(quiet, f"schedule.moments='{moments}'", "schedule.moment_scale=0.25", plugins=[spy]).fit()
    assert spy.before is not None
    for b, a in zip(spy.before, spy.after, strict=True):
        assert torch.equal(a, b * factor) if factor != 1.0 else torch.equal(a, b)


class StopInSettle:
    def __init__(self, settle):
        self.settle, self.seen, self.stopped_at = settle, 0, None

    @hookimpl
    def post_step(self, trainer, step):
        c = trainer.schedule.controller
        if trainer.phase.name == "settle" and c.phase_step == 2:
            self.seen += 1
            if self.seen == self.settle and self.stopped_at is None:
                self.stopped_at = step + 1
                trainer.request_stop()


@pytest.mark.parametrize("settle", [1, 4])
def test_resume_mid_settle_continues_bitwise(quiet, tmp_path, settle):
    args = [a for a in quiet if "out_dir" not in a]
    mixed = "schedule.tolerance=0.05"  # some jumps kept, some rolled back
    whole = nowcast_run([*args, f"run.out_dir='{tmp_path / 'a'}'"], mixed)
    whole.fit()
    stopper = StopInSettle(settle)
    first = nowcast_run([*args, f"run.out_dir='{tmp_path / 'b'}'"], mixed, plugins=[stopper])
    first.fit()
    assert stopper.stopped_at is not None and first.schedule.saved is not None
    second = nowcast_run([*args, f"run.out_dir='{tmp_path / 'b'}'"], mixed)
    second.resume(report=lambda _m: None)
    second.fit()
    w, s = whole.schedule, second.schedule
    assert (s.controller.jumps, s.controller.kept, s.rollbacks) == (w.controller.jumps, w.controller.kept, w.rollbacks)
    assert w.controller.kept and w.rollbacks  # both outcomes happened in this run
    for a, b in zip(whole.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_probes_score_distinct_batches_and_a_full_batch_task_once(quiet):
    from phasetrain.plugins.hybrid.probe import probe_batches

    minibatch = phasetrain.Trainer.from_config("regression", [*quiet, "run.steps=1"])
    assert len(probe_batches(minibatch, 4)) == 4
    full = phasetrain.Trainer.from_config("regression", [*quiet, "run.steps=1", "task.batch_size=0"])
    assert len(probe_batches(full, 4)) == 1


# -- bad input -------------------------------------------------------------------------------------


def test_nowcast_with_a_single_step_model_is_a_clear_error_before_training(quiet):
    trainer = nowcast_run(quiet, "dynamics={use='linear'}")
    with pytest.raises(BadInput, match="nowcasts from snapshots.*'linear'"):
        trainer.fit()
    assert trainer.state.step == 0


def test_jumps_need_a_stage_that_uses_the_runs_optimizer(quiet):
    with pytest.raises(ConfigError, match="schedule.stage: stage 'lbfgs' has its own optimizer"):
        phasetrain.Trainer.from_config("burgers", [*quiet, "schedule.use='nowcast'", "schedule.stage='lbfgs'",
                                                   "dynamics={use='linefit'}"])
    with pytest.raises(ConfigError, match="schedule.stage: no stage named 'nope'"):
        phasetrain.Trainer.from_config("burgers", [*quiet, "schedule.use='nowcast'", "schedule.stage='nope'",
                                                   "dynamics={use='linefit'}"])


class Phases:
    def __init__(self):
        self.seen = []

    @hookimpl
    def phase_enter(self, phase):
        self.seen.append(phase.name)


def test_nowcast_runs_the_burgers_preset_end_to_end_with_jumps_in_the_adam_stage_only(quiet):
    stages = "schedule.stages=[{name='adam', steps=60}, {name='lbfgs', optimizer={use='lbfgs', max_iter=3}}]"
    phases = Phases()
    trainer = phasetrain.Trainer.from_config(
        "burgers", [*quiet, "run.steps=64", "run.eval_every=0", "sampler.n=128", "task.n_initial=32",
                    "task.n_boundary=32", "task.hidden=8", "task.depth=2", "task.eval_grid=[8]", stages,
                    "schedule.use='nowcast'", "schedule.start=5", "schedule.every=4", "schedule.settle_steps=3",
                    "schedule.tolerance=1e9", "dynamics={use='linefit'}"],
        plugins=[phases])
    trainer.fit()
    assert trainer.schedule.controller.jumps >= 2
    assert phases.seen[-1] == "lbfgs" and phases.seen.count("lbfgs") == 1
    assert trainer.state.step == 64
