"""`phasetrain sweep`: Optuna studies in SQLite, trials as runs, pruning through the hooks, resume."""

from __future__ import annotations

import json
import math
import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

import phasetrain
from phasetrain import cli
from phasetrain.errors import ConfigError

optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState, create_trial  # noqa: E402

from phasetrain.plugins import sweep as sweep_mod  # noqa: E402


@given(st.floats(1e-6, 1e3), st.floats(1.0001, 1e4), st.sampled_from(["uniform", "loguniform"]))
def test_a_float_range_parses_into_its_optuna_distribution(low, factor, name):
    dist = sweep_mod.parse_distribution("optimizer.lr", f"{name}({low!r}, {low * factor!r})")
    assert (dist.low, dist.high, dist.log) == (low, low * factor, name == "loguniform")


def test_ints_choices_and_mistakes():
    assert sweep_mod.parse_distribution("task.hidden", "logint(8, 128)").log
    assert sweep_mod.parse_distribution("optimizer.use", "choice('adam', \"sgd\")").choices == ("adam", "sgd")
    for text, message in [("loguniform(0, 1)", "needs low > 0"), ("uniform(2, 1)", "low < high"),
                          ("int(1.5, 3)", "needs integers"), ("normal(0, 1)", r"expected uniform\(a, b\)"),
                          ("choice()", "at least one value")]:
        with pytest.raises(ConfigError, match=message) as info:
            sweep_mod.parse_distribution("k", text, "space.toml")
        assert str(info.value).startswith("space.toml: k: ")


def test_a_trial_reports_its_evaluations_and_stops_when_the_pruner_says_so(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=storage, study_name=sweep_mod.STUDY_NAME)
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for value in (0.01, 0.02, 0.03, 0.04, 0.05):  # five finished trials (the median pruner's start-up),
        # whose evaluations were far better than this trial's at every step
        study.add_trial(create_trial(params={"x": 0.5}, distributions=dist, value=value,
                                     intermediate_values={s: value for s in range(2, 40, 2)}))
    trial = study.ask()
    trainer = phasetrain.Trainer.from_config("regression", [
        f"run.out_dir='{tmp_path / 'trial'}'", "observers.console.quiet=true", "run.steps=40", "run.eval_every=2",
        f"observers.optuna={{storage='{storage}', trial={trial._trial_id}}}", "optimizer.lr=1e-6"])
    outcome = trainer.fit()
    assert outcome.status == "interrupted" and outcome.steps == 2  # pruned at its first evaluation
    saved = study._storage.get_trial(trial._trial_id)
    assert saved.intermediate_values == {2: pytest.approx(outcome.eval["eval_loss"])}
    assert saved.user_attrs["pruned_at"] == 2
    events = [json.loads(line) for line in (trainer.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["name"] for e in events if e["kind"] == "event"] == ["pruned"]


@pytest.mark.slow
def test_a_killed_sweep_resumes_its_study_without_repeating_finished_trials(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["sweep", "regression", "--set", "run.steps=20", "--set", "run.eval_every=10", "--set", "task.n_train=256",
            "--param", "optimizer.lr=loguniform(1e-3, 1e-1)", "--dir", "sw", "--trials", "3", "--jobs", "2",
            "--pruner", "none"]
    # What a killed sweep leaves: its spec and study, one finished trial, one still "running".
    (tmp_path / "sw").mkdir()
    spec = sweep_mod.Sweep("regression", ["run.steps=20", "run.eval_every=10", "task.n_train=256"],
                           {"optimizer.lr": sweep_mod.parse_distribution("optimizer.lr", "loguniform(1e-3, 1e-1)")},
                           sweep_mod.SweepSettings(trials=3, jobs=2, pruner="none"), tmp_path / "sw")
    spec.check_spec()
    study = spec.study()
    dist = {"optimizer.lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)}
    study.add_trial(create_trial(params={"optimizer.lr": 0.05}, distributions=dist, value=0.123))
    killed = study.ask({"optimizer.lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)})
    killed_lr = killed.params["optimizer.lr"]

    assert cli.main(args) == 0
    out = capsys.readouterr().out
    trials = optuna.load_study(study_name=sweep_mod.STUDY_NAME, storage=spec.storage).get_trials()  # as stored
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 3 and states.count(TrialState.FAIL) == 1
    assert trials[0].value == 0.123  # the finished trial was not run again
    assert trials[1].state == TrialState.FAIL and trials[1].user_attrs["interrupted"]
    retried = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(retried) == 1 and retried[0].params["optimizer.lr"] == killed_lr  # the killed one, again
    assert len({t.params["optimizer.lr"] for t in trials}) == 3  # the new one is new: the sampler goes on
    for t in trials[2:]:
        records = [json.loads(line) for line in (tmp_path / "sw" / f"trial_{t.number}" / "metrics.jsonl").open()]
        assert records[-1]["status"] == "completed"
        assert t.value == pytest.approx([r for r in records if r["kind"] == "eval"][-1]["eval_loss"])
    best = min((t for t in trials if t.value is not None), key=lambda t: t.value)
    assert f"best: trial {best.number}, eval_loss" in out
    saved = tomllib.loads((tmp_path / "sw" / "best.toml").read_text())
    assert math.isclose(saved["optimizer"]["lr"], best.params["optimizer.lr"])
    assert cli.main(["config", "sw/best.toml"]) == 0  # phasetrain config reads it back
    assert cli.main(args) == 0  # again: nothing left to run
    assert "3 of 3 trials done; running 0" in capsys.readouterr().out
    assert cli.main([*args[:-2], "--pruner", "median"]) == 2
    assert "holds another sweep (it differs in pruner)" in capsys.readouterr().err
