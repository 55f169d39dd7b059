"""The MLflow observer against a real tracking store: a SQLite file, read back with mlflow's own API."""

from __future__ import annotations

import pytest
import torch

import phasetrain
from phasetrain.registry import load_registry


def test_the_observer_is_discovered_with_its_distribution():
    registry = load_registry()
    assert "mlflow" in registry.names("observer")
    assert registry.origin("observer", "mlflow").distribution == "phasetrain-mlflow"
    assert "mlflow" not in registry.defaults("observer")  # on only when a config asks


@pytest.mark.slow
def test_a_run_and_its_resume_are_one_mlflow_run_with_params_metrics_and_a_loadable_model(tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    run_dir = tmp_path / "run"
    sets = [f"run.out_dir='{run_dir}'", "observers.console.quiet=true", "run.device='cpu'", "run.log_every=2",
            "run.eval_every=4", "run.checkpoint_every=4", "optimizer.lr=0.004",
            "schedule={use='staged', stages=[{name='warm', steps=4}, {name='main'}]}",
            f"observers.mlflow={{tracking_uri='{uri}', experiment='e', artifact_location='{tmp_path / 'artifacts'}'}}"]
    first = phasetrain.Trainer.from_config("regression", [*sets, "run.steps=6"])
    assert first.fit().status == "completed"
    again = phasetrain.Trainer.from_config("regression", [*sets, "run.steps=12"])
    again.resume(report=lambda _m: None)
    outcome = again.fit()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # what mlflow.search_runs reads
    runs = mlflow.search_runs(experiment_names=["e"])
    assert len(runs) == 1, "the resumed run continues the same MLflow run"
    row = runs.iloc[0]
    assert row["status"] == "FINISHED"
    assert row["params.optimizer.lr"] == "0.004" and row["params.task.use"] == "regression"
    assert row["tags.phasetrain.run_dir"] == str(run_dir.resolve())
    assert row["tags.phasetrain.phases"] == "warm -> main"
    assert row["metrics.train/loss"] == pytest.approx(outcome.metrics["loss"], rel=1e-6)
    assert row["metrics.eval/eval_loss"] == pytest.approx(outcome.eval["eval_loss"], rel=1e-6)

    client = MlflowClient(tracking_uri=uri)
    run_id = row["run_id"]
    history = client.get_metric_history(run_id, "train/loss")
    assert sorted({m.step for m in history}) == [2, 4, 6, 8, 10, 12]  # both parts of the run
    assert {m.step: m.value for m in client.get_metric_history(run_id, "train/phase")} == {0: 0.0, 4: 1.0}
    assert [m.step for m in client.get_metric_history(run_id, "eval/eval_loss")] == [4, 6, 8, 12]

    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"checkpoint", "events.json", "report"} <= artifacts
    assert {a.path for a in client.list_artifacts(run_id, "report")} >= {"report/loss-vs-step.png", "report/loss-vs-time.png"}
    downloaded = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoint",
                                                     dst_path=str(tmp_path / "down"), tracking_uri=uri)
    model = phasetrain.load_model(downloaded)
    for loaded, trained in zip(model.state_dict().values(), again.model.state_dict().values(), strict=True):
        assert torch.equal(loaded, trained)
