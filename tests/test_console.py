"""Console progress (rich): an ETA that tells the truth across stages, plain lines off a terminal,
a live display that follows the terminal's width and keeps messages above it."""

from __future__ import annotations

import io
import random
import re
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import phasetrain
from phasetrain.plugins.console import Console, ConsoleOptions, eta_seconds

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def staged(tmp_path, first, second, *more):
    stages = f"schedule={{use='staged', stages=[{{name='adam', steps={first}}}, {{name='lbfgs'}}]}}"
    return phasetrain.Trainer.from_config("regression", [f"run.out_dir='{tmp_path}'", f"run.steps={first + second}",
                                                          "run.device='cpu'", stages, *more])


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def drive(trainer, console, clock, step_seconds, check):
    """Run the console's hooks over the whole schedule on a simulated clock: step ``i`` takes
    ``step_seconds[i]``; ``check(step, stage_end)`` is called after each step."""
    console.train_start(trainer)
    phase = None
    for step in range(trainer.config.run.steps):
        trainer.state.step = step
        now = trainer.schedule.phase(trainer)
        if now is not phase:
            trainer.state.phase, trainer.state.phase_step = now.name, 0
            console.phase_enter(trainer, now, phase)
            phase = now
        clock.now += step_seconds[step]
        trainer.state.step, trainer.state.phase_step = step + 1, trainer.state.phase_step + 1
        console.post_step(trainer, step, {"loss": 0.5, "lr": 1e-3})
        check(step + 1)


@pytest.fixture(scope="module")
def burgers_shaped(tmp_path_factory):
    return staged(tmp_path_factory.mktemp("eta"), 2000, 200)  # the burgers preset's stages: 2000 Adam, 200 L-BFGS


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(adam=st.floats(1e-3, 0.05), lbfgs=st.floats(0.5, 40.0), jitter=st.floats(0.0, 0.3), seed=st.integers(0, 99))
def test_the_eta_of_a_two_stage_run_stays_within_2x_of_the_truth_after_each_stages_first_5_percent(
        burgers_shaped, adam, lbfgs, jitter, seed):
    trainer, (first, second) = burgers_shaped, (2000, 200)  # cheap Adam steps, then long L-BFGS ones
    rng = random.Random(seed)
    seconds = [(adam if i < first else lbfgs) * (1 + rng.uniform(-jitter, jitter)) for i in range(first + second)]
    clock = Clock()
    console = Console(ConsoleOptions(bar="never"), SimpleNamespace(config=trainer.config), io.StringIO(), clock=clock)
    checked = []

    def check(done):
        end = first if done <= first else first + second
        start = 0 if done <= first else first
        truth = sum(seconds[done:end])  # to the end of the stage: the end of the run in the last one
        if done - start >= 0.05 * (end - start) and truth >= 5.0:  # the display shows whole seconds
            eta = eta_seconds(console.current())
            assert eta is not None and 0.5 * truth <= eta <= 2 * truth, (done, eta, truth)
            checked.append(done)

    drive(trainer, console, clock, seconds, check)
    assert any(c > first for c in checked)  # the slow stage was checked (and the fast one if long enough)
    # What the old console did (the average rate since the start) is far off in the slow stage:
    at = first + second // 10
    naive = (first + second - at) * sum(seconds[:at]) / at
    assert naive < 0.5 * sum(seconds[at:])


def test_a_stage_that_is_not_the_last_names_the_stages_still_to_come(tmp_path, capsys):
    trainer = staged(tmp_path, 4, 4, "run.log_every=2", "observers.jsonl.enabled=false")
    trainer.fit()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["2/8", "4/8", "6/8", "8/8"]
    assert lines[0].endswith("+lbfgs") and not lines[-1].endswith("+lbfgs")
    for line in lines:
        assert "\r" not in line and "\x1b" not in line  # plain text off a terminal
        assert " loss " in line and " lr " in line and " elapsed, " in line and "steps/s" in line and "ETA" in line
    assert "[adam] 25%" in lines[0] and "[lbfgs] 100%" in lines[-1]


def test_the_live_display_follows_the_terminal_width_and_prints_messages_above_it(tmp_path, monkeypatch):
    trainer = staged(tmp_path, 6, 6, "run.eval_every=3")
    stream = io.StringIO()
    clock = Clock()
    console = Console(ConsoleOptions(bar="always"), SimpleNamespace(config=trainer.config), stream, clock=clock)
    monkeypatch.delenv("COLUMNS", raising=False)  # rich would take a width set before it starts as fixed

    def check(done):
        if done == 1:
            monkeypatch.setenv("COLUMNS", "120")  # what rich reads for the terminal's width at each redraw
        if done == 6:
            console.progress.refresh()
            monkeypatch.setenv("COLUMNS", "60")  # the terminal is resized
        if done % 3 == 0:
            console.eval_end(trainer, done, {"step": done, "eval_loss": 0.25})
        console.progress.refresh()

    drive(trainer, console, clock, [0.5] * 12, check)
    console.progress.stop()
    text = ANSI.sub("", stream.getvalue())
    frames = [line for line in text.replace("\r", "\n").splitlines() if "━" in line]
    assert frames and max(len(line) for line in frames) > 60  # wide while the terminal was
    resized = text.split("phase adam -> lbfgs at step 6")[1]
    later = [line for line in resized.replace("\r", "\n").splitlines() if "━" in line]
    assert later and all(len(line) <= 60 for line in later)
    evals = [line for line in text.splitlines() if "eval at step" in line]
    assert evals == [f"eval at step {s}: eval_loss 0.25" for s in (3, 6, 9, 12)]  # whole lines, no bar in them
    assert any(line.startswith("lbfgs") and "eta" in line and "loss 0.5" in line for line in later)


def test_a_run_refused_before_it_starts_prints_no_summary(tmp_path, capsys):
    from phasetrain import cli

    sets = ["--set", f"run.out_dir='{tmp_path}'", "--set", "run.steps=2"]
    assert cli.main(["run", "regression", *sets]) == 0
    capsys.readouterr()
    assert cli.main(["run", "regression", *sets]) == 2
    captured = capsys.readouterr()
    assert "summary" not in captured.out and "holds an earlier run" in captured.err
