"""Early stopping and best-k checkpoints, as plugins on the hooks: they act on a constructed
sequence of evaluation metrics exactly when they should, also across a resume."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import phasetrain
from phasetrain import hookimpl
from phasetrain.errors import BadInput, ConfigError
from phasetrain.plugins.best_checkpoints import ranked
from phasetrain.plugins.early_stopping import Plateau

from .conftest import StopAt


@settings(max_examples=100, deadline=None)
@given(rises=st.integers(1, 10), patience=st.integers(1, 6), mode=st.sampled_from(["min", "max"]),
       min_delta=st.sampled_from([0.0, 0.5]), wiggle=st.floats(0.0, 0.49))
def test_a_plateau_stops_after_patience_evaluations_without_improvement(rises, patience, mode, min_delta, wiggle):
    sign = -1.0 if mode == "min" else 1.0
    improving = [sign * 2.0 * i for i in range(rises)]  # each improves on the last by 2 > min_delta
    flat = [improving[-1] + sign * (wiggle if min_delta else 0.0)] * (patience + 3)  # too small an improvement
    plateau = Plateau(mode, patience, min_delta)
    stops = [plateau.update(v) for v in improving + flat]
    assert stops.index(True) == rises - 1 + patience
    assert plateau.best == improving[-1]


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.floats(-10, 10), min_size=1, max_size=12), keep=st.integers(1, 4),
       mode=st.sampled_from(["min", "max"]))
def test_ranked_keeps_the_best_in_order(values, keep, mode):
    entries = [(v, step) for step, v in enumerate(values)]
    best = ranked(entries, mode, keep)
    assert len(best) == min(keep, len(values))
    ordered = sorted(values, reverse=mode == "max")
    assert [v for v, _ in best] == ordered[:keep]
    rest = [v for v, s in entries if (v, s) not in best]
    assert all((b <= r) if mode == "min" else (b >= r) for b, _ in best for r in rest)


class Scores:
    """Puts a constructed ``score`` into every evaluation (by step), before the plugins read it."""

    def __init__(self, by_step):
        self.by_step = by_step

    @hookimpl(tryfirst=True)
    def eval_end(self, step, metrics):
        metrics["score"] = self.by_step.get(step, 0.0)


class Snapshots:
    """The weights after each step."""

    def __init__(self):
        self.weights = {}

    @hookimpl
    def post_step(self, trainer, step):
        self.weights[step + 1] = {k: v.clone() for k, v in trainer.model.state_dict().items()}


def run(tmp_path, scores, *sections, steps=24, plugins=(), resume=False, name="run"):
    overrides = [f"run.out_dir='{tmp_path / name}'", "observers.console.quiet=true", "run.device='cpu'",
                 "run.threads=1", f"run.steps={steps}", "run.eval_every=2", "run.keep_checkpoints=1",
                 "task.n_train=128", "task.n_eval=32", "task.hidden=8", *sections]
    trainer = phasetrain.Trainer.from_config("regression", overrides, plugins=[Scores(scores), *plugins])
    if resume:
        trainer.resume(report=lambda _m: None)
    return trainer, trainer.fit()


# 12 evaluations (every 2 steps): the score rises for 5 of them, then falls
SCORES = {2 * i: v for i, v in enumerate([0.1, 0.3, 0.5, 0.6, 0.9, 0.8, 0.7, 0.85, 0.2, 0.1, 0.1, 0.1], 1)}
EARLY = "early_stopping={use='patience', monitor='score', mode='max', patience=3}"
BEST = "best_checkpoints={use='top_k', monitor='score', mode='max', keep=2}"


def test_early_stopping_stops_at_the_expected_step_also_after_a_resume(tmp_path):
    events = []

    class Events:
        @hookimpl
        def event(self, name, step):
            events.append((name, step))

    _trainer, whole = run(tmp_path, SCORES, EARLY, plugins=[Events()], name="whole")
    assert whole.status == "stopped" and whole.steps == 16  # best 0.9 at step 10; 3 evaluations below it
    assert events == [("early_stop", 16)]
    run(tmp_path, SCORES, EARLY, plugins=[StopAt(12)], name="split")
    _trainer, resumed = run(tmp_path, SCORES, EARLY, resume=True, name="split")
    assert resumed.steps == 16  # the resumed run remembers how long it has waited


def test_best_k_keeps_the_best_checkpoints_apart_from_the_rolling_ones_and_across_a_resume(tmp_path):
    snapshots = Snapshots()
    _trainer, whole = run(tmp_path, SCORES, BEST, plugins=[snapshots], name="whole")
    best = tmp_path / "whole" / "checkpoints" / "best"
    index = json.loads((best / "index.json").read_text())
    assert [(c["step"], c["value"]) for c in index["checkpoints"]] == [(10, 0.9), (16, 0.85)]
    assert sorted(p.name for p in best.iterdir()) == ["index.json", "step-00000010", "step-00000016"]
    assert [p.name for p in (tmp_path / "whole" / "checkpoints").glob("step-*")] == ["step-00000024"]  # keep 1
    model = phasetrain.load_model(tmp_path / "whole", which="best")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, snapshots.weights[10][name]), name
    assert phasetrain.load_checkpoint(tmp_path / "whole", which="best")["meta"]["step"] == 10

    run(tmp_path, SCORES, BEST, plugins=[StopAt(12)], name="split")  # kept 10 and 12 by then
    split = tmp_path / "split" / "checkpoints" / "best"
    assert sorted(p.name for p in split.iterdir()) == ["index.json", "step-00000010", "step-00000012"]
    run(tmp_path, SCORES, BEST, resume=True, name="split")
    assert json.loads((split / "index.json").read_text()) == index
    assert sorted(p.name for p in split.iterdir()) == sorted(p.name for p in best.iterdir())


def test_a_run_without_best_checkpoints_has_no_best_to_load(tmp_path):
    run(tmp_path, SCORES, steps=2)
    with pytest.raises(BadInput, match="keeps no checkpoint named 'best'"):
        phasetrain.load_model(tmp_path / "run", which="best")


@pytest.mark.parametrize("section", [EARLY, BEST])
def test_a_monitor_the_evaluation_lacks_or_no_evaluations_are_errors_naming_the_field(tmp_path, section):
    kind = section.split("=", 1)[0]
    with pytest.raises(ConfigError, match=rf"{kind}\.monitor: 'nope' is not among the evaluation metrics"):
        run(tmp_path, {}, section.replace("'score'", "'nope'"), steps=2)
    with pytest.raises(ConfigError, match=rf"run\.eval_every: must be > 0 with \[{kind}\]"):
        run(tmp_path, {}, section, "run.eval_every=0", steps=2)
