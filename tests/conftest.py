from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from phasetrain import hookimpl

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def quiet(tmp_path):
    """Overrides for a fast, silent run writing into a temporary directory."""
    return [f"run.out_dir='{tmp_path / 'run'}'", "observers.console.quiet=true", "run.device='cpu'"]


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 300):
    """Run ``python -m phasetrain ARGS`` in a subprocess and return the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "phasetrain", *args],
        capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout,
    )


class StopAt:
    """A plugin that asks the run to stop after step ``step`` (1-based), as Ctrl-C would."""

    def __init__(self, step: int):
        self.step = step

    @hookimpl
    def post_step(self, trainer, step):
        if step + 1 == self.step:
            trainer.request_stop()
