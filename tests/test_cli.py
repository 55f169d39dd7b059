"""The `phasetrain` command: exit codes, one-line errors, listings."""

from __future__ import annotations

import tomllib

import pytest

from .conftest import run_cli


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up
def test_run_trains_a_preset_and_prints_a_summary(tmp_path):
    result = run_cli("run", "regression", "--set", "run.steps=20", "--set", f"run.out_dir='{tmp_path}'")
    assert result.returncode == 0, result.stderr
    assert "== phasetrain summary (completed) ==" in result.stdout
    assert "eval_loss" in result.stdout
    assert (tmp_path / "checkpoints" / "step-00000020" / "state.pt").exists()


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up
def test_progress_is_plain_lines_when_not_a_terminal(tmp_path):
    result = run_cli("run", "regression", "--set", "run.steps=20", "--set", "run.log_every=10",
                     "--set", f"run.out_dir='{tmp_path}'")
    assert "\r" not in result.stdout
    assert [line.split()[1] for line in result.stdout.splitlines() if line.startswith("step ")] == ["10/20", "20/20"]


def test_bad_config_exits_2_with_one_line_naming_file_and_field(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[task]\nuse = "regression"\n[optimizer]\nuse = "adam"\nlr = "fast"\n')
    result = run_cli("run", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"phasetrain: error: {bad}: optimizer.lr: expected a float, got a string 'fast'"]


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up
def test_unknown_key_and_unknown_component_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[task]\nuse = "regresion"\n')
    result = run_cli("run", str(bad))
    assert result.returncode == 2
    assert "unknown task 'regresion'" in result.stderr and "did you mean 'regression'?" in result.stderr
    result = run_cli("run", "regression", "--set", "run.stepz=3")
    assert result.returncode == 2 and "run.stepz: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up
def test_invalid_toml_and_missing_file_exit_2(tmp_path):
    bad = tmp_path / "broken.toml"
    bad.write_text("[task\n")
    result = run_cli("run", str(bad))
    assert result.returncode == 2 and f"{bad}: not valid TOML" in result.stderr
    result = run_cli("run", str(tmp_path / "missing.toml"))
    assert result.returncode == 2 and "no such file" in result.stderr


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up
def test_bad_arguments_exit_2():
    assert run_cli("frobnicate").returncode == 2
    assert run_cli("run").returncode == 2


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up
def test_config_prints_the_resolved_config_as_toml():
    result = run_cli("config", "lm", "--set", "optimizer.lr=0.01")
    assert result.returncode == 0, result.stderr
    data = tomllib.loads(result.stdout)
    assert data["optimizer"] == {**data["optimizer"], "use": "adamw", "lr": 0.01}
    assert data["run"]["keep_checkpoints"] == 3 and data["task"]["n_head"] == 4


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up
def test_presets_lists_the_shipped_presets():
    result = run_cli("presets")
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert {"regression", "lm", "regression-lbfgs"} <= set(names)


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up
def test_a_failure_during_training_exits_1_and_keeps_the_last_checkpoint(tmp_path):
    from .test_registry import fake_distribution

    env = fake_distribution(tmp_path / "site", """
        from phasetrain import hookimpl

        @hookimpl
        def post_step(step):
            if step == 6:
                raise RuntimeError("sensor on fire")
    """, name="crashplug")
    out = tmp_path / "out"
    result = run_cli("run", "regression", "--set", "run.steps=10", "--set", "run.checkpoint_every=5",
                     "--set", f"run.out_dir='{out}'", env=env)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("phasetrain: training failed: at step 7, in hook post_step: plugin 'crashplug")
    assert "raised RuntimeError: sensor on fire" in last and "Traceback" not in result.stderr
    assert "== phasetrain summary (failed) ==" in result.stdout
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000005"]


def test_version_prints_the_installed_version(capsys):
    import pytest

    import phasetrain
    from phasetrain import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"phasetrain {phasetrain.__version__}\n"


@pytest.mark.slow  # a subprocess: seconds of interpreter start-up
def test_a_closed_pipe_ends_the_command_quietly():
    """``phasetrain presets | head -0``: the reader is gone before anything is written."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "phasetrain", "presets"], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=300)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (141, "")


def test_help_shows_a_components_options_with_their_docs(capsys):
    from phasetrain import cli

    assert cli.main(["help", "observer", "jsonl"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("observer 'jsonl' from phasetrain ")
    assert "[observers.jsonl]" in out and "  every = 0  (int)" in out
    assert "train records every N steps; 0: run.log_every" in out  # the option's doc, from its source
    assert cli.main(["help", "run"]) == 0 and "out_dir = \"runs/default/{version}\"  (str)" in capsys.readouterr().out
    assert cli.main(["help", "optimizer"]) == 0 and "adam" in capsys.readouterr().out
    assert cli.main(["help", "optimizer", "adamm"]) == 2
    err = capsys.readouterr().err
    assert "unknown optimizer 'adamm'" in err and "did you mean 'adam'" in err
