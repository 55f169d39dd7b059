"""Run directories: a version per run, a `latest` pointer, a lock, and no run touching another's files."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import phasetrain
from phasetrain import cli, hookimpl
from phasetrain.errors import BadInput
from phasetrain.plugins import rundir
from phasetrain.plugins.metrics import read_records

from .conftest import ROOT


def sets(out_dir, *more):
    return [f"run.out_dir='{out_dir}'", "observers.console.quiet=true", "run.device='cpu'", "run.steps=6", "run.log_every=2",
            "task.n_train=256", "task.hidden=16", *more]


def files_of(path: Path) -> dict[str, str]:
    """Every file under ``path`` with the SHA-256 of its content."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_each_run_gets_a_new_version_and_latest_points_to_the_last_one(tmp_path):
    template = tmp_path / "runs" / "reg" / "{version}"
    first = phasetrain.Trainer.from_config("regression", sets(template)).fit()
    second = phasetrain.Trainer.from_config("regression", sets(template)).fit()
    root = tmp_path / "runs" / "reg"
    assert (first.run_dir, second.run_dir) == (str(root / "version_0"), str(root / "version_1"))
    assert os.readlink(root / "latest") == "version_1"
    for run in ("version_0", "version_1"):  # each run's files in its own directory
        assert (root / run / "metrics.jsonl").is_file() and (root / run / "checkpoints").is_dir()
        assert not (root / run / rundir.LOCK_FILE).exists()  # released at the end


def test_the_readme_snippet_loads_the_model_it_just_trained(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    phasetrain.Trainer.from_config("regression", ["run.steps=30", "observers.console.quiet=true"]).fit()  # an earlier run
    trainer = phasetrain.Trainer.from_config("regression", ["run.steps=20", "observers.console.quiet=true",
                                                            "optimizer.lr=0.01"])
    outcome = trainer.fit()
    for model in (phasetrain.load_model("runs/regression"), phasetrain.load_model(outcome.run_dir)):
        for loaded, trained in zip(model.state_dict().values(), trainer.model.state_dict().values(), strict=True):
            assert torch.equal(loaded, trained)
    assert phasetrain.load_checkpoint("runs/regression")["meta"]["step"] == 20


def test_a_trainer_built_but_never_run_gives_its_version_back(tmp_path):
    template = tmp_path / "r" / "{version}"
    unused = phasetrain.Trainer.from_config("regression", sets(template))
    assert unused.out_dir == tmp_path / "r" / "version_0" and unused.out_dir.is_dir()
    path = unused.out_dir
    del unused
    import gc

    gc.collect()
    assert not path.exists()
    assert phasetrain.Trainer.from_config("regression", sets(template)).fit().run_dir == str(path)


def test_a_fresh_run_refuses_a_directory_holding_an_earlier_run_and_changes_nothing(tmp_path):
    out = tmp_path / "exact"
    phasetrain.Trainer.from_config("regression", sets(out)).fit()
    before = files_of(out)
    again = phasetrain.Trainer.from_config("regression", sets(out, "optimizer.lr=0.1"))
    with pytest.raises(BadInput, match="holds an earlier run: continue it with --resume"):
        again.fit()
    assert files_of(out) == before
    resumed = phasetrain.Trainer.from_config("regression", sets(out, "run.steps=8"))
    resumed.resume(report=lambda _m: None)
    assert resumed.fit().steps == 8  # continuing it is what --resume is for


def test_resume_continues_the_latest_run_or_the_one_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base = ["run", "regression", "--set", "run.steps=4", "--set", "observers.console.quiet=true",
            "--set", "task.n_train=256"]
    assert cli.main(base) == 0 and cli.main(base) == 0
    root = Path("runs/regression")
    assert cli.main([*base[:3], "run.steps=6", *base[4:], "--resume"]) == 0
    assert "resuming from runs/regression/version_1/checkpoints/step-00000004" in capsys.readouterr().out
    assert cli.main([*base[:3], "run.steps=6", *base[4:], "--resume", "version_0"]) == 0
    assert "resuming from runs/regression/version_0/" in capsys.readouterr().out
    assert os.readlink(root / "latest") == "version_0"  # the run that trained last
    assert sorted(rundir.versions(root)) == ["version_0", "version_1"]
    assert cli.main([*base, "--resume", "version_7"]) == 2
    assert "--resume version_7: no such run under runs/regression (there: version_0, version_1)" in capsys.readouterr().err


@pytest.mark.parametrize("versioned", [False, True], ids=["exact", "versioned"])
def test_two_runs_of_one_name_at_once_never_share_a_directory(tmp_path, capsys, versioned):
    out = tmp_path / "runs" / ("{version}" if versioned else "exact")
    codes = []

    class SecondRunMidway:
        @hookimpl
        def post_step(self, step):
            if step == 2:  # the first run is training in its directory: start another one like it
                codes.append(cli.main(["run", "regression", *[a for s in sets(out) for a in ("--set", s)]]))

    first = phasetrain.Trainer.from_config("regression", sets(out), plugins=[SecondRunMidway()])
    outcome = first.fit()
    assert outcome.status == "completed"
    records = read_records(first.out_dir / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "train"] == [2, 4, 6]
    assert records[-1]["kind"] == "end" and records[-1]["status"] == "completed"
    assert len(json.loads((first.out_dir / rundir.MANIFEST).read_text())["starts"]) == 1
    assert sorted(p.name for p in (first.out_dir / "checkpoints").iterdir()) == ["step-00000006"]
    if versioned:  # both complete, each in its own directory
        assert codes == [0] and first.out_dir.name == "version_0"
        second = read_records(first.out_dir.parent / "version_1" / "metrics.jsonl")
        assert second[-1]["status"] == "completed"
    else:  # the second is refused, naming the holder, and writes nothing
        assert codes == [2]
        err = capsys.readouterr().err
        assert f"{out} is in use by another run: PID {os.getpid()} on host {socket.gethostname()}, started 20" in err


HOLD = """
import sys
from pathlib import Path
from phasetrain.plugins.rundir import Lock
Lock(Path(sys.argv[1])).acquire()
print("held", flush=True)
sys.stdin.read()
"""


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out / rundir.LOCK_FILE)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert cli.main(["run", "regression", *[a for s in sets(out) for a in ("--set", s)]]) == 2
        assert f"PID {holder.pid}" in capsys.readouterr().err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / rundir.LOCK_FILE).exists()  # the killed holder could not clean up
    assert cli.main(["run", "regression", *[a for s in sets(out) for a in ("--set", s)]]) == 0
    err = capsys.readouterr().err
    assert f"took over the lock of a run that ended without releasing it (PID {holder.pid} on host" in err
    assert not (out / rundir.LOCK_FILE).exists()


def test_a_bad_version_placeholder_is_a_config_error(tmp_path, capsys):
    assert cli.main(["run", "regression", "--set", f"run.out_dir='{tmp_path}/{{version}}/x'"]) == 2
    assert "run.out_dir: {version} must be the last part of the path" in capsys.readouterr().err


@given(st.lists(st.one_of(st.integers(0, 50).map(lambda n: f"version_{n}"), st.sampled_from(["latest", "x", "version_", "version_a"])),
                max_size=8))
def test_the_next_version_is_one_past_the_highest_and_never_reused(names):
    numbers = [int(n.split("_")[1]) for n in names if n.startswith("version_") and n[8:].isdigit()]
    assert rundir.next_version(names) == max(numbers, default=-1) + 1
    assert f"version_{rundir.next_version(names)}" not in names


def test_every_shipped_preset_gives_each_run_its_own_version():
    """docs/runs.md promises that a preset's runs never share a directory."""
    from phasetrain import config as config_mod
    from phasetrain.registry import load_registry

    presets = load_registry().presets()
    assert len(presets) >= 10
    for name in presets:
        assert config_mod.load(name).run.out_dir.endswith("{version}"), name
