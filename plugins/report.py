"""``phasetrain report RUN_DIR... [--out DIR]``: compare runs from their metrics files.

Reads each run's ``metrics.jsonl`` (written by the ``jsonl`` observer, on by default), prints a
summary table (run, status, steps, final loss, final evaluation metrics, training time) and
draws two PNGs with one line per run: loss against step and loss against training time, with
evaluation losses as points and the phases of each run shaded (see :mod:`.report_plot`).

The command is contributed through the ``phasetrain_add_commands`` hook, the way any plugin
adds one; matplotlib is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs

from phasetrain import hookimpl
from phasetrain.errors import BadInput
from phasetrain.plugins.metrics import FILE, RESERVED, read_records


@attrs.frozen
class RunMetrics:
    """The records of one run's metrics file, split by kind."""

    label: str
    path: Path
    records: list[dict[str, Any]]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("kind") == kind]

    @property
    def steps(self) -> int:
        return max((r["step"] for r in self.records if isinstance(r.get("step"), int)), default=0)

    @property
    def seconds(self) -> float | None:
        times = [r["time"] for r in self.records if isinstance(r.get("time"), (int, float))]
        return max(times) if times else None

    @property
    def final_loss(self) -> float | None:
        losses = [r for r in self.of("train") if "loss" in r]
        return losses[-1]["loss"] if losses else None

    @property
    def final_eval(self) -> dict[str, Any]:
        evals = self.of("eval")
        return {k: v for k, v in evals[-1].items() if k not in RESERVED} if evals else {}

    @property
    def status(self) -> str:
        """The last ``end`` record's status; ``unfinished`` when records follow it or none exists
        (a run still going, or one that was killed)."""
        last_end = max((i for i, r in enumerate(self.records) if r.get("kind") == "end"), default=-1)
        if last_end < 0 or any(r.get("kind") in ("train", "eval") for r in self.records[last_end + 1:]):
            return "unfinished"
        return str(self.records[last_end].get("status", "?"))


def load_run(arg: str) -> tuple[Path, list[dict[str, Any]]]:
    """A run directory (or a metrics file given directly) → (file, records); BadInput otherwise."""
    path = Path(arg)
    if path.is_dir():
        file = path / FILE
        if not file.is_file():
            raise BadInput(f"{arg}: no {FILE} in this run directory (the jsonl observer writes it; "
                           "is it switched off, or is this not a run directory?)")
    elif path.is_file():
        file = path
    else:
        raise BadInput(f"{arg}: no such run directory")
    records = read_records(file)
    if not records:
        raise BadInput(f"{file}: holds no records yet")
    return file, records


def load_runs(args: Sequence[str]) -> list[RunMetrics]:
    """Every run given, labelled by its directory name (the full path where two names clash)."""
    loaded = [(arg, *load_run(arg)) for arg in args]
    names = [(file.parent.name if file.name == FILE else file.stem) or arg for arg, file, _ in loaded]
    return [
        RunMetrics(name if names.count(name) == 1 else arg, file, records)
        for name, (arg, file, records) in zip(names, loaded, strict=True)
    ]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    return f"{whole // 3600:d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def summary_rows(runs: Sequence[RunMetrics]) -> list[list[str]]:
    """The summary table: a header row, then one row per run."""
    eval_keys: list[str] = []
    for run in runs:
        eval_keys += [k for k in run.final_eval if k not in eval_keys]
    rows = [["run", "status", "steps", "final loss", *eval_keys, "time"]]
    for run in runs:
        evals = run.final_eval
        rows.append([run.label, run.status, str(run.steps), _fmt(run.final_loss),
                     *(_fmt(evals.get(k)) for k in eval_keys), _clock(run.seconds)])
    return rows


def print_table(rows: Sequence[Sequence[str]], stream: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        stream.write("  ".join(cells).rstrip() + "\n")


def report(run_dirs: Sequence[str], out: str | None = None, stream: TextIO | None = None) -> list[Path]:
    """Print the summary of ``run_dirs`` and write the plots; return the PNG paths.

    ``out`` defaults to the run's own directory for one run and the current directory otherwise.
    """
    from phasetrain.plugins import report_plot

    stream = stream or sys.stdout
    runs = load_runs(run_dirs)
    if out is None:
        out = str(runs[0].path.parent) if len(runs) == 1 else "."
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInput(f"--out {out}: exists and is not a directory")
    print_table(summary_rows(runs), stream)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = report_plot.write_plots(runs, out_dir)
    for path in written:
        stream.write(f"wrote {path}\n")
    return written


def _run(args: argparse.Namespace) -> int:
    report(args.run_dirs, args.out)
    return 0


@hookimpl
def phasetrain_add_commands(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report", help="summarise runs and plot their losses from metrics.jsonl",
        description="Print a summary table of the runs and write loss-vs-step.png and "
                    "loss-vs-time.png (one line per run, phases shaded, evaluation points).",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="a run's out_dir (or a metrics.jsonl file)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="where the PNGs go (default: the run directory for one run, "
                             "else the current directory)")
    parser.set_defaults(handler=_run)
