"""`phasetrain report`: plots and a summary table from metrics files; plugins add commands."""

from __future__ import annotations

import re
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

import phasetrain
from phasetrain import cli, hookimpl
from phasetrain import registry as registry_mod
from phasetrain.plugins import report_plot
from phasetrain.plugins.metrics import encode, read_records
from phasetrain.plugins.report import RunMetrics, load_runs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def train(tmp_path, name, *more):
    out = tmp_path / name
    args = [f"run.out_dir='{out}'", "observers.console.quiet=true", "run.device='cpu'", "task.n_train=256",
            "task.hidden=16", "run.steps=10", "run.log_every=2", "run.eval_every=5", *more]
    outcome = phasetrain.Trainer.from_config("regression", args).fit()
    return out, outcome


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    return width, height


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    plain = train(tmp, "plain")
    staged = train(tmp, "staged", "run.steps=12",
                   "schedule={use='staged', stages=[{name='warm', steps=4}, {name='main'}]}")
    return tmp, plain, staged


def test_report_writes_two_pngs_and_a_summary_table(two_runs, capsys):
    tmp, (plain_dir, plain), (staged_dir, staged) = two_runs
    out = tmp / "plots"
    assert cli.main(["report", str(plain_dir), str(staged_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()

    header = printed[0].split()
    assert header[:2] == ["run", "status"] and "eval_loss" in header and header[-1] == "time"
    rows = {line.split()[0]: line.split() for line in printed[1:3]}
    for name, outcome in [("plain", plain), ("staged", staged)]:
        row = rows[name]
        assert row[1] == outcome.status
        assert int(row[2]) == outcome.steps
        assert float(row[3]) == pytest.approx(outcome.metrics["loss"], rel=1e-3)
        assert float(row[4]) == pytest.approx(outcome.eval["eval_loss"], rel=1e-3)

    import matplotlib.image

    for x, _suffix, _label in report_plot.AXES:
        path = out / report_plot.file_name("loss", x)
        assert f"wrote {path}" in printed
        width, height = png_size(path)
        assert (width, height) == (8 * report_plot.DPI, 5 * report_plot.DPI)  # figsize (8, 5)
        pixels = matplotlib.image.imread(path)
        assert pixels.shape[:2] == (height, width) and pixels.std() > 0.01  # something is drawn


def test_one_run_is_plotted_into_its_own_directory(two_runs, capsys):
    _tmp, (_plain_dir, _), (staged_dir, _) = two_runs
    assert cli.main(["report", str(staged_dir)]) == 0
    assert (staged_dir / "loss-vs-step.png").exists() and (staged_dir / "loss-vs-time.png").exists()
    assert capsys.readouterr().out.splitlines()[1].split()[0] == "staged"


def test_bad_run_directories_exit_2_with_a_clear_message(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"phasetrain: error: {tmp_path / 'missing'}: no such run directory"
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "no metrics.jsonl in this run directory" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text("garbage\n" + encode({"kind": "train", "step": 1}) + "\n")
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "metrics.jsonl:1: not a JSON object" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text("")
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "holds no records" in capsys.readouterr().err


def test_an_unfinished_run_is_reported_as_such(tmp_path, capsys):
    run = tmp_path / "live"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(encode(r) + "\n" for r in [
        {"kind": "phase", "step": 0, "time": 0.0, "wall": 1.0, "phase": "train", "previous": None},
        {"kind": "train", "step": 5, "time": 1.5, "wall": 2.5, "phase": "train", "loss": None, "lr": 0.1},
    ]))
    assert cli.main(["report", str(run), "--out", str(tmp_path / "o")]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[:4] == ["live", "unfinished", "5", "-"]


def test_any_metric_is_compared_and_plotted_and_an_unknown_one_is_named(two_runs, capsys):
    tmp, (plain_dir, plain), (staged_dir, _staged) = two_runs
    out = tmp / "lr-plots"
    assert cli.main(["report", str(plain_dir), str(staged_dir), "--metric", "lr", "--metric", "eval_loss",
                     "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert header[:8] == ["run", "status", "steps", "final", "loss", "lr", "min", "lr"]
    row = dict(zip(["run", "status", "steps", "final_loss", "lr", "min_lr", "eval_loss", "min_eval_loss"],
                   lines[1].split(), strict=False))
    records = read_records(plain_dir / "metrics.jsonl")
    lrs = [r["lr"] for r in records if r["kind"] == "train"]
    assert float(row["lr"]) == pytest.approx(lrs[-1], rel=1e-3) and float(row["min_lr"]) == pytest.approx(min(lrs), rel=1e-3)
    assert float(row["eval_loss"]) == pytest.approx(plain.eval["eval_loss"], rel=1e-3)
    for name in ("lr-vs-step.png", "lr-vs-time.png", "eval_loss-vs-step.png", "eval_loss-vs-time.png"):
        assert f"wrote {out / name}" in lines and png_size(out / name) == (880, 550)
    assert cli.main(["report", str(plain_dir), "--metric", "rel_l2", "--out", str(out)]) == 2
    assert "--metric rel_l2: not logged by any of these runs (logged: eval_loss, loss, lr" in capsys.readouterr().err


def test_phases_of_several_runs_are_bands_of_their_own_named_in_a_legend(two_runs):
    _tmp, (plain_dir, _), (staged_dir, _) = two_runs
    runs = load_runs([str(plain_dir), str(staged_dir), str(staged_dir)])  # the same run twice is read once
    assert [run.label for run in runs] == ["plain", "staged"]
    figure = report_plot.figure(runs, "loss", "step", "step")
    main, lane = figure.axes
    assert not main.patches  # nothing shaded behind the lines
    assert [t.get_text() for t in lane.get_yticklabels()] == ["plain", "staged"]
    assert [t.get_text() for t in lane.get_legend().get_texts()] == ["train", "warm", "main"]
    bands = [(round(v[:, 0].min()), round(v[:, 0].max() - v[:, 0].min()))
             for bars in lane.collections for v in (path.vertices for path in bars.get_paths())]
    assert bands == [(0, 10), (0, 4), (4, 8)]  # plain: train; staged: warm for 4 steps, then main


def test_a_directory_of_runs_stands_for_every_run_in_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        phasetrain.Trainer.from_config("regression", ["observers.console.quiet=true", "run.steps=4",
                                                      "task.n_train=256", "task.hidden=16"]).fit()
    capsys.readouterr()
    assert cli.main(["report", "runs/regression", "runs/regression/latest", "--out", "plots"]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:3]]
    assert rows == ["regression/version_0", "regression/version_1"]


def test_the_loss_against_time_follows_records_written_inside_long_steps():
    records = [{"kind": "train", "step": 1, "time": 1.0, "loss": 1.0},
               {"kind": "inner", "step": 1, "time": 3.0, "loss": 0.5, "evaluation": 4},
               {"kind": "inner", "step": 1, "time": 5.0, "loss": 0.25, "evaluation": 8},
               {"kind": "train", "step": 2, "time": 6.0, "loss": 0.2}]
    run = RunMetrics("lbfgs", None, records)
    assert report_plot.metric_series(run, "loss", "time")[:2] == ([1.0, 3.0, 5.0, 6.0], [1.0, 0.5, 0.25, 0.2])
    assert report_plot.metric_series(run, "loss", "step")[:2] == ([1.0, 2.0], [1.0, 0.2])


def test_a_long_lbfgs_step_writes_inner_records(tmp_path):
    """A step that runs longer than inner_every writes its progress (here: every closure call)."""
    out, _ = train(tmp_path, "inner", "run.steps=2", "observers.jsonl.inner_every=1e-9",
                   "optimizer={use='lbfgs', max_iter=5}", "lr_schedule={use='constant'}")
    inner = [r for r in read_records(out / "metrics.jsonl") if r["kind"] == "inner"]
    assert inner and {r["step"] for r in inner} <= {0, 1}
    assert [r["evaluation"] for r in inner if r["step"] == 0] == list(range(2, 2 + len([r for r in inner if r["step"] == 0])))
    assert all(isinstance(r["loss"], float) for r in inner)


phase_names = st.sampled_from(["warm", "full", "predict", "correct"])


@given(st.lists(st.tuples(st.integers(0, 50), phase_names), min_size=1, max_size=8), st.integers(0, 60))
def test_phase_spans_tile_the_run_and_alternate(marks, extra):
    marks = sorted(marks, key=lambda m: m[0])
    last = marks[-1][0] + extra
    records = [{"kind": "phase", "step": s, "phase": p} for s, p in marks]
    records.append({"kind": "train", "step": last})
    spans = report_plot.phase_spans(RunMetrics("r", None, records), "step")
    assert all(start < end for _n, start, end in spans)
    for (name_a, _s, end_a), (name_b, start_b, _e) in zip(spans, spans[1:]):
        assert end_a == start_b and name_a != name_b  # contiguous, merged when the phase repeats
    assert sum(end - start for _n, start, end in spans) == last - marks[0][0]


# ---------------------------------------------------------------------------------------------
# Plugins add commands through phasetrain_add_commands
# ---------------------------------------------------------------------------------------------


class Hello:
    @hookimpl
    def phasetrain_add_commands(self, subparsers):
        parser = subparsers.add_parser("hello", help="say hello")
        parser.add_argument("name")
        parser.set_defaults(handler=lambda args: print(f"hello {args.name}") or 3)


class Thief:
    @hookimpl
    def phasetrain_add_commands(self, subparsers):
        subparsers.add_parser("run").set_defaults(handler=lambda args: 0)


def with_plugin(monkeypatch, obj, name):
    installed = registry_mod.load_registry().plugins
    extra = registry_mod.Registry([*installed, registry_mod.plugin(obj, name, "hello-dist")])
    monkeypatch.setattr(registry_mod, "load_registry", lambda *a, **k: extra)


def test_a_plugin_adds_a_command_and_its_handler_decides_the_exit_code(monkeypatch, capsys):
    with_plugin(monkeypatch, Hello(), "hello")
    assert cli.main(["hello", "world"]) == 3
    assert capsys.readouterr().out == "hello world\n"


def test_a_plugin_that_takes_a_builtin_command_is_named(monkeypatch, capsys):
    with_plugin(monkeypatch, Thief(), "thief")
    assert cli.main(["plugins"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("phasetrain: error: plugin 'thief' from hello-dist")
    assert re.search(r"\brun\b", err.split("phasetrain_add_commands", 1)[1])  # the command it took


@pytest.mark.slow
def test_report_draws_the_fields_of_a_pinn_run(tmp_path, capsys):
    out = tmp_path / "pinn"
    sets = [f"run.out_dir='{out}'", "observers.console.quiet=true", "run.device='cpu'", "run.steps=2",
            "sampler.n=64", "task.hidden=8", "task.depth=2",
            "task.eval_grid=[9, 5]"]
    phasetrain.Trainer.from_config("poisson2d", sets).fit()
    capsys.readouterr()
    assert cli.main(["report", str(out)]) == 0
    assert f"wrote {out / 'fields-u.png'}" in capsys.readouterr().out
    assert png_size(out / "fields-u.png") == (1200, 360)
    assert cli.main(["report", str(out), "--no-fields", "--out", str(tmp_path / "o")]) == 0
    assert "fields-u.png" not in capsys.readouterr().out
