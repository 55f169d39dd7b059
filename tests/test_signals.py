"""Stopping a run from outside: SIGTERM checkpoints and exits 0; SIGKILL at any moment resumes
to the same final weights as a run that was never interrupted."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import phasetrain

ARGS = ["run.threads=1", "run.device='cpu'", "run.log_every=1000", "lr_schedule={use='constant'}"]


def start(out, steps, resume=False):
    cmd = [sys.executable, "-m", "phasetrain", "run", "regression"]
    for item in [*ARGS, f"run.steps={steps}", "run.checkpoint_every=20", f"run.out_dir='{out}'"]:
        cmd += ["--set", item]
    if resume:
        cmd.append("--resume")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(out, timeout=120):
    root = out / "checkpoints"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if root.is_dir() and any(p.name.startswith("step-") for p in root.iterdir()):
            return
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def uninterrupted(tmp_path, steps):
    trainer = phasetrain.Trainer.from_config(
        "regression", [*ARGS, f"run.steps={steps}", f"run.out_dir='{tmp_path / 'whole'}'",
                       "observers.console.quiet=true"])
    trainer.fit()
    return trainer.model.state_dict()


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up
def test_sigterm_checkpoints_says_how_to_resume_and_exits_0(tmp_path):
    out = tmp_path / "run"
    proc = start(out, steps=200000)
    wait_for_checkpoint(out)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "SIGTERM received" in stderr
    assert "--resume" in stdout and "interrupted" in stdout
    state = phasetrain.load_checkpoint(out)
    stopped = state["meta"]["step"]
    assert 20 <= stopped < 200000
    assert f"stopped at step {stopped}" in stdout


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up
def test_sigkill_at_random_moments_always_resumes_to_identical_weights(tmp_path):
    steps = 400
    out = tmp_path / "run"
    rng = random.Random(os.getpid())
    for attempt in range(3):
        proc = start(out, steps, resume=attempt > 0)
        if attempt == 0:
            wait_for_checkpoint(out)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.kill()
        proc.communicate(timeout=60)
    proc = start(out, steps, resume=True)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    final = phasetrain.load_checkpoint(out)
    assert final["meta"]["step"] == steps
    expected = uninterrupted(tmp_path, steps)
    for name, tensor in expected.items():
        assert torch.equal(final["model"][name], tensor), name


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up
def test_resume_without_checkpoint_exits_2(tmp_path):
    from .conftest import run_cli

    result = run_cli("run", "regression", "--set", f"run.out_dir='{tmp_path}'", "--resume")
    assert result.returncode == 2
    assert "no checkpoint to resume from" in result.stderr and "Traceback" not in result.stderr



# A plugin that says where the command is and waits there, so that a signal lands at a known
# moment: while the command line is being built (before any command runs), while a resume
# restores state, or in train_start (training has started).
WAITER = """
    import os, pathlib, time
    from phasetrain import hookimpl

    def _wait(where, trainer=None):
        if os.environ.get("WAITER_AT") != where:
            return
        pathlib.Path(os.environ["WAITER_FLAG"]).write_text(where)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (trainer is not None and trainer.stop_requested):
            time.sleep(0.02)

    @hookimpl
    def phasetrain_add_commands(subparsers):
        _wait("start-up")

    @hookimpl
    def restore(trainer):
        _wait("resume")

    @hookimpl
    def train_start(trainer):
        _wait("train_start", trainer)
"""


def signalled_at(tmp_path, out, at, sig, resume=False):
    """Run the command with the waiter, send ``sig`` when it waits at ``at``; the finished process."""
    from .test_registry import fake_distribution

    flag = tmp_path / f"flag-{at}-{sig}"
    env = {**fake_distribution(tmp_path / f"site-{at}-{sig}", WAITER, name="waiter"), "WAITER_FLAG": str(flag),
           "WAITER_AT": at}
    cmd = [sys.executable, "-m", "phasetrain", "run", "regression"]
    for item in [*ARGS, "run.steps=40", "run.checkpoint_every=20", f"run.out_dir='{out}'"]:
        cmd += ["--set", item]
    proc = subprocess.Popen([*cmd, *(["--resume"] if resume else [])], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
    deadline = time.monotonic() + 120
    while not flag.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return proc.returncode, stdout, stderr


def files_under(path):
    return {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()} if path.exists() else {}


@pytest.mark.slow
def test_a_signal_before_training_exits_128_plus_its_number_having_written_nothing(tmp_path):
    out = tmp_path / "fresh"  # SIGTERM while the command line is still being built
    code, _stdout, stderr = signalled_at(tmp_path, out, "start-up", signal.SIGTERM)
    assert code == 143 and stderr.strip().splitlines() == ["phasetrain: interrupted (SIGTERM)"]
    assert not out.exists()
    resumed = tmp_path / "resumed"  # SIGINT while a resume restores state
    phasetrain.Trainer.from_config("regression", [*ARGS, "run.steps=20", f"run.out_dir='{resumed}'",
                                                  "observers.console.quiet=true"]).fit()
    before = files_under(resumed)
    code, _stdout, stderr = signalled_at(tmp_path, resumed, "resume", signal.SIGINT, resume=True)
    assert code == 130 and stderr.strip().splitlines()[-1] == "phasetrain: interrupted (SIGINT)"
    assert files_under(resumed) == before


@pytest.mark.slow
def test_a_signal_once_training_has_started_checkpoints_and_exits_0_with_a_runnable_hint(tmp_path):
    import shlex

    out = tmp_path / "run dir"  # a space: the hint must quote it
    code, stdout, stderr = signalled_at(tmp_path, out, "train_start", signal.SIGTERM)
    assert code == 0, stderr
    assert (out / "checkpoints" / "step-00000000" / "state.pt").exists()
    hint = shlex.split(stdout.split("resume with:")[1].strip().splitlines()[0])
    assert hint[:3] == [sys.executable, "-m", "phasetrain"] and hint[-2:] == ["--resume", str(out)]
    assert f"run.out_dir='{out}'" in hint
    result = subprocess.run(hint, capture_output=True, text=True, timeout=300)  # pasted back, it resumes
    assert result.returncode == 0 and "resuming from" in result.stdout, result.stderr


def test_resuming_a_finished_run_changes_nothing(tmp_path, capsys):
    from phasetrain import cli

    out = tmp_path / "run"
    phasetrain.Trainer.from_config("regression", [*ARGS, "run.steps=10", f"run.out_dir='{out}'",
                                                  "observers.console.quiet=true"]).fit()
    before = files_under(out)
    capsys.readouterr()
    assert cli.main(["run", "regression", *[w for s in [*ARGS, "run.steps=10", f"run.out_dir='{out}'"]
                                            for w in ("--set", s)], "--resume"]) == 0
    assert "already finished at step 10" in capsys.readouterr().out
    assert files_under(out) == before  # no second final checkpoint, eval or end record
