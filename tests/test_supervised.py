"""The supervised task: import paths and their errors, phasetrain.fit with live objects, resume,
load_model both ways, and import paths recorded in a run directory that never run by themselves."""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch

import phasetrain
from phasetrain.plugins.store import meta_checksum
from phasetrain import hookimpl
from phasetrain.errors import BadInput, CheckpointError, ConfigError
from phasetrain.plugins.supervised import imports

from phasetrain.cli import main as cli

from .conftest import ROOT, StopAt
from .supervised_helpers import Net, table

H = "tests.supervised_helpers"


def raw(tmp_path, **task):
    return {
        "run": {"steps": 6, "out_dir": str(tmp_path / "run"), "device": "cpu", "threads": 1, "checkpoint_every": 3},
        "observers": {"console": {"quiet": True}},
        "task": {"use": "supervised", "model": f"{H}:Net", "train_data": f"{H}:table", "val_data": f"{H}:table",
                 "val_args": {"seed": 1}, "metrics": ["accuracy"], "loader": {"batch_size": 16}, **task},
    }


# ---------------------------------------------------------------------------------------------
# Import paths: every error names the field and the cause
# ---------------------------------------------------------------------------------------------

ERRORS = [
    ({"model": "nosuchpkg.nets:Net"}, "task.model", "no module named 'nosuchpkg'"),
    ({"model": f"{H}:Nope"}, "task.model", "has no attribute 'Nope'"),
    ({"model": "math:pi"}, "task.model", "is a float: expected a torch.nn.Module or a callable"),
    ({"model": f"{H}:table"}, "task.model", "returned a TensorDataset, not a torch.nn.Module"),
    ({"model_args": {"depth": 3}}, "task.model", "unexpected keyword argument 'depth'"),
    ({"model": "not a path"}, "task.model", "must be an import path"),
    ({"train_data": f"{H}:Net"}, "task.train_data", "returned a Net, not a Dataset"),
    ({"train_data": ""}, "task.train_data", "is required"),
    ({"val_data": "@held_out"}, "task.val_data", "names a live object this run was not given"),
    ({"model_args": {"features": 5}}, "task.train_data", r"inputs \(a tensor of shape \(4, 6\)\) do not fit the model"),
    ({"model": f"{H}:NoForward"}, "task.model", "NoForward cannot be called"),
    ({"loss": f"{H}:per_item_loss"}, "task.loss", r"returned a tensor of shape \(4,\), not a scalar"),
    ({"loss": "mse"}, "task.loss", "element by element"),
    ({"metrics": ["mae"]}, "task.metrics", "'mae' does not fit the model's output"),
    ({"metrics": ["accuracy"], "metric_args": {"f1": {}}}, "task.metric_args", "'f1' is not one of the metrics"),
]


@pytest.mark.parametrize(("change", "field", "message"), ERRORS, ids=[e[1] + ":" + e[2][:24] for e in ERRORS])
def test_a_bad_import_path_or_a_misfit_is_a_config_error_naming_the_field(tmp_path, change, field, message):
    with pytest.raises(ConfigError, match=f"{re.escape(field)}: .*{message}") as caught:
        phasetrain.Trainer.from_config(raw(tmp_path, **change))
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "run").exists()  # refused before anything ran


def test_the_command_exits_2_with_one_line_naming_the_file_and_the_field(tmp_path, capsys):
    config = tmp_path / "mine.toml"
    config.write_text('[task]\nuse = "supervised"\nmodel = "nosuchpkg.nets:Net"\ntrain_data = "x.y:z"\n')
    assert cli(["run", str(config), "--set", f"run.out_dir='{tmp_path / 'run'}'"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"phasetrain: error: {config}: task.model: cannot import 'nosuchpkg.nets:Net': no module named 'nosuchpkg'"]


def test_a_loader_option_that_decides_the_data_order_may_not_change_on_resume(tmp_path):
    phasetrain.Trainer.from_config(raw(tmp_path)).fit()
    changed = phasetrain.Trainer.from_config(raw(tmp_path, loader={"batch_size": 32}))
    with pytest.raises(CheckpointError, match=r"task\.loader\.batch_size was 16 and is now 32"):
        changed.resume(report=lambda _m: None)
    workers = phasetrain.Trainer.from_config(raw(tmp_path, loader={"batch_size": 16, "num_workers": 1}))
    workers.resume(report=lambda _m: None)  # the number of workers does not change the data
    assert workers.step == 6


# ---------------------------------------------------------------------------------------------
# phasetrain.fit: live objects, resume, load_model
# ---------------------------------------------------------------------------------------------


def fit(tmp_path, steps, resume=False, plugins=(), workers=0, name="fit"):
    torch.manual_seed(123)  # the instance's initial weights: the same module in every call
    model = Net()
    return phasetrain.fit(
        model, table(), val_data=table(seed=1), metrics=["accuracy", "f1"], resume=resume, plugins=plugins,
        overrides=[f"run.steps={steps}", f"run.out_dir='{tmp_path / name}'", "observers.console.quiet=true",
                   "run.device='cpu'", "run.threads=1", "task.loader.batch_size=20",
                   f"task.loader.num_workers={workers}", "run.checkpoint_every=4"]), model


def test_fit_trains_a_live_module_on_a_live_dataset_and_resumes_bit_for_bit(tmp_path):
    whole, whole_model = fit(tmp_path, 14, name="whole")
    assert whole.status == "completed" and set(whole.eval) == {"eval_loss", "accuracy", "f1", "step"}
    assert whole_model.training is True  # the run trained the very instance it was given
    first, _ = fit(tmp_path, 14, plugins=[StopAt(7)], name="split")  # stops mid-epoch (5 batches an epoch)
    assert first.status == "interrupted" and first.steps == 7
    second, _ = fit(tmp_path, 14, resume=True, name="split")
    assert second.status == "completed" and second.steps == 14
    a, b = phasetrain.load_checkpoint(whole.run_dir), phasetrain.load_checkpoint(second.run_dir)
    for name, tensor in a["model"].items():
        assert torch.equal(b["model"][name], tensor), name
    assert a["trainer"] == {**b["trainer"], "elapsed": a["trainer"]["elapsed"]}


def test_fit_with_resume_starts_a_fresh_run_where_there_is_none(tmp_path):
    outcome, _ = fit(tmp_path, 3, resume=True)
    assert outcome.status == "completed" and outcome.steps == 3


def test_load_model_rebuilds_from_the_import_path_or_fills_a_given_instance(tmp_path):
    outcome, trained = fit(tmp_path, 4)
    config = phasetrain.load_checkpoint(outcome.run_dir)["meta"]["config"]
    assert config["task"]["model"] == f"{H}:Net" and config["task"]["train_data"] == "@train_data"
    rebuilt = phasetrain.load_model(outcome.run_dir)
    given = phasetrain.load_model(outcome.run_dir, model=Net())
    assert type(rebuilt) is Net and not rebuilt.training and not given.training
    x = torch.randn(5, 6)
    trained.eval()
    assert torch.equal(rebuilt(x), trained(x)) and torch.equal(given(x), trained(x))


# ---------------------------------------------------------------------------------------------
# Import paths are code: a run directory from elsewhere cannot run any
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def crafted(tmp_path, monkeypatch):
    """A real run directory whose recorded config was edited to name ``os:system``."""
    fit(tmp_path, 2, name="crafted")
    marker = tmp_path / "pwned"
    checkpoint = next((tmp_path / "crafted" / "checkpoints").glob("step-*"))
    meta = json.loads((checkpoint / "meta.json").read_text())
    meta["config"]["task"].update(model="os:system", model_args={"command": f"touch {marker}"})
    meta["meta_sha256"] = meta_checksum(meta)  # an attacker re-seals the file: a checksum is no signature
    (checkpoint / "meta.json").write_text(json.dumps(meta))
    monkeypatch.setattr(imports, "_OWN", set())  # a fresh process: nothing trained with yet
    return tmp_path / "crafted", marker


def test_a_recorded_import_path_is_not_called_by_load_model(crafted):
    run_dir, marker = crafted
    with pytest.raises(ConfigError, match=r"task\.model: 'os:system' is code named by a config read from a run "
                                          r"directory; it runs only with trust_code=True"):
        phasetrain.load_model(run_dir)
    assert not marker.exists()


def test_resume_config_and_report_of_the_crafted_run_directory_run_no_code(crafted, tmp_path, capsys):
    run_dir, marker = crafted
    mine = tmp_path / "mine.toml"
    mine.write_text(f'[task]\nuse = "supervised"\nmodel = "{H}:Net"\ntrain_data = "{H}:table"\n'
                    '[observers.console]\nquiet = true\n')
    assert cli(["run", str(mine), "--set", f"run.out_dir='{run_dir}'", "--resume"]) == 2
    assert re.search(r"the config differs in .*task\.model", capsys.readouterr().err)
    evil = tmp_path / "evil.toml"
    evil.write_text(f'[task]\nuse = "supervised"\nmodel = "os:system"\nmodel_args = {{ command = "touch {marker}" }}\n'
                    'train_data = "os:system"\n')
    assert cli(["config", str(evil)]) == 0
    assert 'model = "os:system"' in capsys.readouterr().out
    assert cli(["config", str(run_dir)]) == 2
    cli(["report", str(run_dir), "--out", str(tmp_path / "report")])
    assert not marker.exists()


def test_trust_code_opts_in_and_the_result_is_checked(crafted):
    run_dir, marker = crafted
    with pytest.raises(ConfigError, match=r"task\.model: 'os:system' returned a int, not a torch\.nn\.Module"):
        phasetrain.load_model(run_dir, trust_code=True)
    assert marker.exists()  # the caller opted in: the recorded path ran, and its result was refused


def test_a_path_the_users_own_config_named_is_trusted_by_load_model(tmp_path):
    outcome, _ = fit(tmp_path, 2)
    saved = set(imports._OWN)
    imports._OWN.clear()
    try:
        with pytest.raises(ConfigError, match="trust_code=True"):
            phasetrain.load_model(outcome.run_dir)
        assert type(phasetrain.load_model(outcome.run_dir, trust_code=True)) is Net
    finally:
        imports._OWN.update(saved)
    assert f"{H}:Net" in imports._OWN  # fit() named it: this process trusts it from then on
    assert type(phasetrain.load_model(outcome.run_dir)) is Net


# ---------------------------------------------------------------------------------------------
# The Python way, as the docs show it
# ---------------------------------------------------------------------------------------------


def docs_script() -> str:
    text = (ROOT / "docs" / "your-model.md").read_text()
    return re.search(r"<!-- fit-script -->\s*```python\n(.*?)```", text, re.S).group(1)


def test_the_docs_script_is_at_most_15_lines():
    lines = [line for line in docs_script().splitlines() if line.strip()]
    assert len(lines) <= 15, "\n".join(lines)


@pytest.mark.slow
def test_the_docs_script_trains_resumes_and_loads_its_script_defined_module(tmp_path):
    script = docs_script()
    assert '"run.steps=500"' in script
    import subprocess

    for name, steps in (("first.py", 40), ("second.py", 60)):  # the script as written, shorter; then longer
        (tmp_path / name).write_text(script.replace('"run.steps=500"', f'"run.steps={steps}"')
                                     .replace('"run.eval_every=100"', '"run.eval_every=20"'))
    both = "import runpy; runpy.run_path('first.py', run_name='__main__'); runpy.run_path('second.py', run_name='__main__')"
    ran = subprocess.run([sys.executable, "-c", both], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    meta = json.loads((tmp_path / "runs" / "net" / "checkpoints" / "step-00000040" / "meta.json").read_text())
    assert meta["config"]["task"]["model"] == "__main__:Net" and meta["config"]["task"]["train_data"] == "@train_data"
    first, second = ran.stdout.split("== phasetrain summary", 2)[1:]
    assert "steps       40" in first  # the second script continues from step 40 to 60
    assert "resuming from" in first.rsplit("run dir", 1)[1] and "steps       60" in second
    assert list((tmp_path / "runs" / "net" / "tensorboard").iterdir())


class NoEvaluate:
    """A task with a model, batches and a loss, and no evaluate."""

    def __init__(self, _options, _ctx):
        self.model = torch.nn.Linear(3, 1)

    def batch(self, index):
        return torch.full((4, 3), float(index % 5))

    def loss(self, model, batch):
        return model(batch).pow(2).mean()


class NoEvaluatePlugin:
    @hookimpl
    def phasetrain_components(self):
        return [phasetrain.Component("task", "no_evaluate", NoEvaluate)]


def test_a_task_without_evaluate_trains_to_the_end_and_saves_its_last_checkpoint(tmp_path):
    from phasetrain.registry import plugin

    outcome = phasetrain.Trainer.from_config(
        {"task": {"use": "no_evaluate"}}, [f"run.out_dir='{tmp_path}'", "run.steps=3", "observers.console.quiet=true"],
        plugins=[plugin(NoEvaluatePlugin())]).fit()
    assert outcome.status == "completed" and outcome.eval == {"step": 3}
    assert phasetrain.load_checkpoint(tmp_path)["meta"]["step"] == 3


def test_fit_is_part_of_the_phasetrain_namespace():
    from phasetrain.plugins.supervised.api import fit as the_fit

    assert phasetrain.fit is the_fit
    with pytest.raises(AttributeError):
        phasetrain.no_such_function  # noqa: B018
    with pytest.raises(BadInput, match="no checkpoint named 'worst'"):
        phasetrain.load_model(ROOT, which="worst")
