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


def test_resume_without_checkpoint_exits_2(tmp_path):
    from .conftest import run_cli

    result = run_cli("run", "regression", "--set", f"run.out_dir='{tmp_path}'", "--resume")
    assert result.returncode == 2
    assert "no checkpoint to resume from" in result.stderr and "Traceback" not in result.stderr
