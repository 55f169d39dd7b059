"""``phasetrain report RUN_OR_SWEEP... [--metric NAME ...] [--out DIR]``: compare runs.

Reads each run's ``metrics.jsonl`` (written by the ``jsonl`` observer, on by default). A
directory of runs (``runs/regression`` with its ``version_N``, a sweep with its ``trial_N``)
stands for every run in it. Prints a comparison table (run, status, steps, final loss, the last
value and the best of each ``--metric``, the final evaluation, training time) and draws, for
each metric (default: ``loss``), one PNG against step and one against training time, a line
per run, with the phases of each run as a band of its own under the plot (see
:mod:`.report_plot`). A run whose task draws pictures of what it learned (the PINN fields) gets
them as ``fields-<name>.png`` in the run's own directory.

The command is contributed through the ``phasetrain_add_commands`` hook, the way any plugin
adds one; matplotlib is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs

from phasetrain import hookimpl
from phasetrain.errors import BadInput
from phasetrain.plugins.metrics import FILE, RESERVED, read_records

#: Where a metric's values come from, in the order they are looked for.
KINDS = ("train", "eval")


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

    def values(self, metric: str) -> list[float]:
        """The logged numbers of ``metric`` in order (train records first, else eval records)."""
        for kind in KINDS:
            found = [r[metric] for r in self.of(kind) if _is_number(r.get(metric))]
            if found:
                return found
        return []

    def has(self, metric: str) -> bool:
        return any(metric in r for r in self.records if r.get("kind") in KINDS)

    @property
    def status(self) -> str:
        """The last ``end`` record's status; ``unfinished`` when records follow it or none exists
        (a run still going, or one that was killed)."""
        last_end = max((i for i, r in enumerate(self.records) if r.get("kind") == "end"), default=-1)
        if last_end < 0 or any(r.get("kind") in ("train", "eval") for r in self.records[last_end + 1:]):
            return "unfinished"
        return str(self.records[last_end].get("status", "?"))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_run(arg: str | Path) -> tuple[Path, list[dict[str, Any]]]:
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


def expand(arg: str) -> list[tuple[str, Path]]:
    """``arg`` as (label, path) of runs: a run directory or metrics file is itself, labelled by
    its name; a directory of runs (versions of a name, trials of a sweep) is each run in it, in
    order, labelled ``dir/run``."""
    path = Path(arg)
    inner = [] if not path.is_dir() or (path / FILE).is_file() else sorted(
        (p for p in path.iterdir() if p.is_dir() and not p.is_symlink() and (p / FILE).is_file()), key=_natural)
    if inner:
        return [(f"{path.name}/{p.name}", p) for p in inner]
    return [((path.stem if path.is_file() else path.name) or arg, path)]  # load_run says what is missing


def _natural(path: Path) -> tuple[str, int]:
    head, _, tail = path.name.rpartition("_")
    return (head, int(tail)) if tail.isdigit() else (path.name, -1)


def load_runs(args: Sequence[str]) -> list[RunMetrics]:
    """Every run given, labelled by its name (by its path where two names clash); the same run
    given twice (``latest`` and its version) is read once."""
    seen: set[Path] = set()
    loaded = []
    for arg in args:
        for label, path in expand(arg):
            if path.resolve() not in seen:
                seen.add(path.resolve())
                loaded.append((label, path, *load_run(path)))
    labels = [label for label, *_rest in loaded]
    return [RunMetrics(label if labels.count(label) == 1 else str(path), file, records)
            for label, path, file, records in loaded]


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


def summary_rows(runs: Sequence[RunMetrics], metrics: Sequence[str] = ()) -> list[list[str]]:
    """The comparison table: a header row, then one row per run. Each requested metric other
    than ``loss`` gets two columns, its last value and its lowest."""
    eval_keys: list[str] = []
    for run in runs:
        eval_keys += [k for k in run.final_eval if k not in eval_keys and k not in metrics]
    extra = [m for m in dict.fromkeys(metrics) if m != "loss"]
    rows = [["run", "status", "steps", "final loss", *[c for m in extra for c in (m, f"min {m}")], *eval_keys, "time"]]
    for run in runs:
        evals = run.final_eval
        cells = []
        for metric in extra:
            values = run.values(metric)
            cells += [_fmt(values[-1] if values else None), _fmt(min(values) if values else None)]
        rows.append([run.label, run.status, str(run.steps), _fmt(run.final_loss), *cells,
                     *(_fmt(evals.get(k)) for k in eval_keys), _clock(run.seconds)])
    return rows


def print_table(rows: Sequence[Sequence[str]], stream: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        stream.write("  ".join(cells).rstrip() + "\n")


def report(run_dirs: Sequence[str], out: str | None = None, stream: TextIO | None = None,
           metrics: Sequence[str] = (), fields: bool = True) -> list[Path]:
    """Print the comparison of ``run_dirs`` and write the plots; return the PNG paths.

    ``out`` defaults to the run's own directory for one run and the current directory otherwise.
    """
    from phasetrain.plugins import report_plot

    stream = stream or sys.stdout
    metrics = list(dict.fromkeys(metrics or ["loss"]))
    runs = load_runs(run_dirs)
    if unknown := [m for m in metrics if not any(run.has(m) for run in runs)]:
        logged = sorted({k for run in runs for r in run.records if r.get("kind") in KINDS for k in r} - set(RESERVED))
        raise BadInput(f"--metric {unknown[0]}: not logged by any of these runs (logged: {', '.join(logged)})")
    if out is None:
        out = str(runs[0].path.parent) if len(runs) == 1 else "."
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInput(f"--out {out}: exists and is not a directory")
    print_table(summary_rows(runs, metrics), stream)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = report_plot.write_plots(runs, out_dir, metrics)
    if fields:
        for run in runs:
            written += draw_fields(run.path.parent)
    for path in written:
        stream.write(f"wrote {path}\n")
    return written


def draw_fields(run_dir: Path) -> list[Path]:
    """``fields-<name>.png`` in ``run_dir`` from the pictures its task draws of the trained model
    (matplotlib figures; a task that draws none, or a run without a checkpoint, gives none)."""
    from matplotlib.figure import Figure

    from phasetrain import config as config_mod
    from phasetrain.plugins.reading import load_checkpoint
    from phasetrain.errors import CheckpointError
    from phasetrain.loop import Trainer
    from phasetrain.plugins.tensorboard import RendersImages

    if not (run_dir / "checkpoints").is_dir():
        return []
    try:
        state = load_checkpoint(run_dir)
    except CheckpointError:
        return []
    try:  # a run directory from elsewhere may name code: the report never runs it (trust_code=False)
        cfg = config_mod.build(state["meta"]["config"], overrides=["strategy={use='single'}"], source=str(run_dir))
        cfg.run.device = "cpu"
        cfg.sections = {k: v for k, v in cfg.sections.items() if not isinstance(v, dict)}  # no observers
        trainer = Trainer(cfg, run_dir=run_dir, trust_code=False, model_only=True)
    except BadInput as exc:
        print(f"phasetrain: report: no fields for {run_dir}: {exc}", file=sys.stderr)
        return []
    if not isinstance(trainer.task, RendersImages):
        return []
    trainer.model.load_state_dict(state["model"])
    trainer.model.eval()
    written = []
    for name, picture in trainer.task.images(trainer.model).items():
        if isinstance(picture, Figure):
            path = run_dir / f"fields-{name.replace('/', '-')}.png"
            picture.savefig(path)
            written.append(path)
    return written


def _run(args: argparse.Namespace) -> int:
    report(args.run_dirs, args.out, metrics=args.metrics, fields=args.fields)
    return 0


@hookimpl
def phasetrain_add_commands(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report", help="compare runs and plot any logged metric from metrics.jsonl",
        description="Print a comparison table of the runs and write <metric>-vs-step.png and "
                    "<metric>-vs-time.png for each --metric (one line per run, phases as bands), "
                    "and the fields of PINN runs.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_OR_SWEEP",
                        help="a run directory (or its metrics.jsonl), or a directory of runs: the "
                             "versions of a name (runs/regression) or the trials of a sweep")
    parser.add_argument("--metric", dest="metrics", action="append", default=[], metavar="NAME",
                        help="a logged metric to plot and compare (repeatable; default: loss), "
                             "e.g. --metric rel_l2 --metric lr")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="where the plots go (default: the run directory for one run, "
                             "else the current directory)")
    parser.add_argument("--no-fields", dest="fields", action="store_false",
                        help="do not draw the fields of PINN runs (fields-<name>.png)")
    parser.set_defaults(handler=_run)
