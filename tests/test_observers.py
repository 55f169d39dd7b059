"""Observers: the metrics file, TensorBoard event files, and console progress."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import phasetrain
from phasetrain import Component, hookimpl
from phasetrain.errors import TrainingFailed
from phasetrain.plugins.metrics import encode, read_records
from phasetrain.plugins.tasks.regression import Regression, RegressionOptions
from phasetrain.registry import plugin

from .conftest import StopAt

TWO_PHASES = "schedule={use='staged', stages=[{name='warm', steps=6}, {name='main'}]}"


class Recorder:
    """What the hooks saw, as plain numbers, keyed by the step the observers write."""

    def __init__(self):
        self.train, self.evals, self.phases = {}, {}, []

    @hookimpl
    def post_step(self, trainer, step, metrics):
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (torch.Tensor, int, float))}
        self.train[step + 1] = (trainer.state.phase, numbers)

    @hookimpl
    def eval_end(self, step, metrics):
        self.evals[step] = {k: v for k, v in metrics.items() if k != "step"}

    @hookimpl
    def phase_enter(self, trainer, phase, previous):
        self.phases.append((trainer.state.step, phase.name, previous.name if previous else None))


def overrides(tmp_path, *more):
    return [f"run.out_dir='{tmp_path}'", "observers.console.quiet=true", "run.device='cpu'",
            "task.n_train=256", "task.hidden=16", *more]


# ---------------------------------------------------------------------------------------------
# metrics.jsonl
# ---------------------------------------------------------------------------------------------


def test_metrics_file_is_on_by_default_and_matches_what_the_hooks_saw(tmp_path):
    rec = Recorder()
    steps, every, eval_every = 14, 4, 5
    trainer = phasetrain.Trainer.from_config(
        "regression", overrides(tmp_path, f"run.steps={steps}", f"run.log_every={every}",
                                f"run.eval_every={eval_every}", TWO_PHASES), plugins=[rec])
    before = time.time()
    outcome = trainer.fit()
    records = read_records(tmp_path / "metrics.jsonl")

    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [s for s in range(1, steps + 1) if s % every == 0 or s == steps]
    for r in train:
        phase, seen = rec.train[r["step"]]
        assert r["phase"] == phase
        assert {k: r[k] for k in seen} == seen  # loss, lr and every other number, exactly
        assert list(r)[:7] == ["kind", "step", "time", "wall", "phase", "loss", "lr"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert {r["step"]: {k: v for k, v in r.items() if k not in ("kind", "step", "time", "wall", "phase")}
            for r in evals} == rec.evals
    assert [(r["step"], r["phase"], r["previous"]) for r in records if r["kind"] == "phase"] == rec.phases
    assert records[-1]["kind"] == "end" and records[-1]["status"] == outcome.status
    times = [r["time"] for r in records]
    assert times == sorted(times) and times[-1] <= outcome.seconds + 1.0
    assert all(before - 1 <= r["wall"] <= time.time() + 1 for r in records)


def test_metrics_cadence_is_the_observers_own(tmp_path):
    trainer = phasetrain.Trainer.from_config(
        "regression", overrides(tmp_path, "run.steps=9", "run.log_every=100", "observers.jsonl.every=3"))
    trainer.fit()
    steps = [r["step"] for r in read_records(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == [3, 6, 9]


def comparable(records):
    return [{k: v for k, v in r.items() if k not in ("time", "wall")} for r in records if r["kind"] != "end"]


RESUME_ARGS = ["run.steps=16", "run.log_every=3", "run.eval_every=4", TWO_PHASES]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    phasetrain.Trainer.from_config("regression", overrides(out, *RESUME_ARGS)).fit()
    return comparable(read_records(out / "metrics.jsonl"))


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stop=st.integers(1, 15))
def test_a_resumed_run_writes_the_file_an_uninterrupted_run_writes(tmp_path_factory, uninterrupted, stop):
    base = tmp_path_factory.mktemp("resume")
    args = RESUME_ARGS
    expected = uninterrupted

    first = phasetrain.Trainer.from_config("regression", overrides(base / "split", *args), plugins=[StopAt(stop)])
    assert first.fit().status == "interrupted"
    second = phasetrain.Trainer.from_config("regression", overrides(base / "split", *args))
    second.resume(report=lambda _m: None)
    second.fit()
    records = read_records(base / "split" / "metrics.jsonl")
    got = comparable(records)
    # The interruption itself may add records at the stop step (a last train record, an
    # evaluation); everything else is exactly what the uninterrupted run wrote, once.
    extra = [r for r in got if r not in expected]
    assert all(r["step"] == stop and r["kind"] in ("train", "eval") for r in extra)
    assert [r for r in got if r not in extra] == expected
    assert len({(r["kind"], r["step"]) for r in got}) == len(got)
    train_times = [r["time"] for r in records if r["kind"] == "train"]
    assert train_times == sorted(train_times)


def test_records_written_after_the_checkpoint_are_dropped_on_resume(tmp_path):
    args = ["run.steps=12", "run.log_every=2", "run.checkpoint_every=6", "run.keep_checkpoints=5"]
    trainer = phasetrain.Trainer.from_config("regression", overrides(tmp_path, *args))
    trainer.fit()
    crashed = read_records(tmp_path / "metrics.jsonl")
    shutil.rmtree(tmp_path / "checkpoints" / "step-00000012")  # as if it died after step 12's record
    again = phasetrain.Trainer.from_config("regression", overrides(tmp_path, *args))
    again.resume(report=lambda _m: None)
    again.fit()
    records = read_records(tmp_path / "metrics.jsonl")
    assert comparable(records) == comparable(crashed)  # same run, the tail written once
    assert [r["step"] for r in records if r["kind"] == "train"] == [2, 4, 6, 8, 10, 12]


class RollBackOnce:
    """Does what the non-finite policy's rollback does: back to the last checkpoint, mid-run."""

    def __init__(self, at):
        self.at, self.done = at, False

    @hookimpl(tryfirst=True)
    def post_step(self, trainer, step):
        if step + 1 == self.at and not self.done:
            self.done = True
            _path, state, _meta = trainer.store.latest(trainer.out_dir)
            trainer.request_rollback(state)


def test_a_rollback_during_the_run_leaves_one_record_per_step(tmp_path):
    args = ["run.steps=12", "run.log_every=2", "run.checkpoint_every=6", "observers.tensorboard={hparams=false}"]
    phasetrain.Trainer.from_config("regression", overrides(tmp_path / "whole", *args)).fit()
    rolled = phasetrain.Trainer.from_config("regression", overrides(tmp_path / "rolled", *args),
                                            plugins=[RollBackOnce(10)])
    rolled.fit()
    records = read_records(tmp_path / "rolled" / "metrics.jsonl")
    assert comparable(records) == comparable(read_records(tmp_path / "whole" / "metrics.jsonl"))
    times = [r["time"] for r in records]
    assert times == sorted(times)  # the time lost to the rollback stays on the clock
    steps = [e.step for e in accumulate(tmp_path / "rolled" / "tensorboard").Scalars("train/loss")]
    assert steps == [2, 4, 6, 8, 10, 12]


def test_a_record_cut_short_by_a_crash_is_ignored_and_a_bad_line_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(encode({"kind": "train", "step": 1}) + "\n" + '{"kind": "tr')
    assert read_records(path) == [{"kind": "train", "step": 1}]
    path.write_text("not json\n" + encode({"kind": "train", "step": 1}) + "\n")
    with pytest.raises(phasetrain.errors.BadInput, match=r"metrics.jsonl:1: not a JSON object"):
        read_records(path)


finite = st.floats(allow_nan=False, allow_infinity=False)
values = st.one_of(finite, st.integers(-2**53, 2**53), st.booleans(), st.text(max_size=8),
                   st.just(float("nan")), st.just(float("inf")))


@given(st.dictionaries(st.text(min_size=1, max_size=8), values, max_size=6))
def test_records_survive_a_round_trip_with_non_finite_numbers_as_null(record):
    line = encode(record)
    assert "\n" not in line
    back = json.loads(line)
    for key, value in record.items():
        if isinstance(value, float) and not np.isfinite(value):
            assert back[key] is None
        else:
            assert back[key] == value


# ---------------------------------------------------------------------------------------------
# TensorBoard
# ---------------------------------------------------------------------------------------------


class PictureTask(Regression):
    """The regression task plus ``images``: one picture whose brightness follows the weights."""

    calls = 0

    def images(self, model):
        from matplotlib.figure import Figure

        type(self).calls += 1
        assert not model.training
        level = int(torch.sigmoid(next(model.parameters()).detach().sum()).item() * 255)
        figure = Figure(figsize=(2, 1), dpi=50)  # a figure goes through add_figure
        figure.add_subplot().plot([0, 1], [0, level])
        return {"field": np.full((6, 10, 3), level, dtype=np.uint8), "plot": figure}


class BrokenPictureTask(Regression):
    def images(self, model):
        return {"field": np.zeros((6, 10), dtype=np.float32)}


class PictureTasks:
    @hookimpl
    def phasetrain_components(self):
        return [Component("task", "pictures", PictureTask, RegressionOptions),
                Component("task", "broken_pictures", BrokenPictureTask, RegressionOptions)]


def accumulate(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_writes_scalars_phases_images_and_hparams(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    rec = Recorder()
    args = overrides(tmp_path, "run.steps=12", "run.log_every=4", "run.eval_every=3", TWO_PHASES,
                     "task.use='pictures'", "observers.tensorboard={image_every=2}", "optimizer.lr=0.004")
    trainer = phasetrain.Trainer.from_config("regression", args, plugins=[plugin(PictureTasks()), rec])
    outcome = trainer.fit()
    acc = accumulate(tmp_path / "tensorboard")
    tags = acc.Tags()

    expected = {"train/loss", "train/lr", "train/step_time", "train/phase", "eval/eval_loss", "hparams/loss",
                "hparams/eval_loss"}
    assert expected <= set(tags["scalars"])
    loss = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert sorted(loss) == [4, 8, 12]
    for step, value in loss.items():
        assert value == pytest.approx(rec.train[step][1]["loss"], rel=1e-6)
    evals = {e.step: e.value for e in acc.Scalars("eval/eval_loss")}
    assert evals == pytest.approx({s: m["eval_loss"] for s, m in rec.evals.items()}, rel=1e-6)
    phase_index = {e.step: e.value for e in acc.Scalars("train/phase")}
    assert phase_index[0] == 0 and phase_index[6] == 1 and phase_index[12] == 1
    assert all(e.value > 0 for e in acc.Scalars("train/step_time"))
    assert {"phase/text_summary", "config/text_summary"} <= set(tags["tensors"])

    # Four evaluations (steps 3, 6, 9, 12) and image_every = 2: pictures at the 2nd and 4th.
    assert [e.step for e in acc.Images("images/field")] == [6, 12]
    assert (acc.Images("images/field")[0].width, acc.Images("images/field")[0].height) == (10, 6)
    assert [e.step for e in acc.Images("images/plot")] == [6, 12]
    assert (acc.Images("images/plot")[0].width, acc.Images("images/plot")[0].height) == (100, 50)  # 2x1 in at 50 dpi

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["optimizer.lr"].number_value == pytest.approx(0.004)
    assert start.session_start_info.hparams["task.use"].string_value == "pictures"
    final = {e.step: e.value for e in acc.Scalars("hparams/eval_loss")}
    assert final == {12: pytest.approx(outcome.eval["eval_loss"], rel=1e-6)}


def test_tensorboard_after_a_resume_keeps_one_continuous_curve(tmp_path):
    args = overrides(tmp_path, "run.steps=12", "run.log_every=2", "run.checkpoint_every=6",
                     "run.keep_checkpoints=5", "observers.tensorboard={hparams=false}")
    phasetrain.Trainer.from_config("regression", args).fit()
    shutil.rmtree(tmp_path / "checkpoints" / "step-00000012")
    again = phasetrain.Trainer.from_config("regression", args)
    again.resume(report=lambda _m: None)
    again.fit()
    steps = [e.step for e in accumulate(tmp_path / "tensorboard").Scalars("train/loss")]
    assert steps == [2, 4, 6, 8, 10, 12]


def test_task_images_of_the_wrong_shape_are_a_clear_error(tmp_path):
    args = overrides(tmp_path, "run.steps=2", "task.use='broken_pictures'", "observers.tensorboard={}")
    trainer = phasetrain.Trainer.from_config("regression", args, plugins=[plugin(PictureTasks())])
    with pytest.raises(TrainingFailed, match=r"images\(\)\['field'\] must be a matplotlib Figure or a uint8 array \(H, W, 3\)"):
        trainer.fit()


# ---------------------------------------------------------------------------------------------
# Console progress
# ---------------------------------------------------------------------------------------------


def console_output(tmp_path, capsys, *more):
    args = [f"run.out_dir='{tmp_path}'", "run.device='cpu'", "task.n_train=256", "task.hidden=16",
            "run.steps=8", "run.log_every=4", "observers.jsonl.enabled=false", *more]
    phasetrain.Trainer.from_config("regression", args).fit()
    return capsys.readouterr().out


def test_progress_is_plain_lines_when_not_a_terminal(tmp_path, capsys):
    out = console_output(tmp_path, capsys)
    assert "\r" not in out
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["4/8", "8/8"]
    for line in lines:
        assert "[train]" in line and " loss " in line and "steps/s" in line and "ETA" in line


def test_quiet_console_prints_only_the_summary(tmp_path, capsys):
    out = console_output(tmp_path, capsys, "observers.console.quiet=true")
    assert "\r" not in out and "step " not in out.split("== phasetrain summary")[0]
    assert "== phasetrain summary (completed) ==" in out
