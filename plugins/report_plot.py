"""The plots of ``phasetrain report``: any logged metric against step and against training time.

One line per run. ``loss`` is the training loss, with the evaluation losses as points of the
same colour; against time it also follows the ``"inner"`` records written inside long steps, so
an L-BFGS stage shows its progress instead of one straight segment. Any other metric is drawn
from the records that hold it (``lr`` from training records, ``rel_l2`` from evaluations).

The phases of the runs are not shaded behind the lines, where several runs would overlap into
mud: each run gets a band of its own in a lane under the plot, coloured by phase, with the
phases named in a legend. Drawn with matplotlib's object-oriented API on the Agg canvas, so it
never touches pyplot's global state or needs a display.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phasetrain.errors import PhasetrainError

if TYPE_CHECKING:
    from phasetrain.plugins.report import RunMetrics

#: (record field on the x axis, file suffix, axis label)
AXES = (
    ("step", "step", "step"),
    ("time", "time", "training time since the start (s)"),
)
FIGSIZE, DPI = (8, 5), 110
EVAL_KEY = "eval_loss"
#: Colours of the phases, apart from the runs' line colours (C0, C1, ...).
PHASE_COLORS = ("silver", "gold", "lightskyblue", "palegreen", "plum", "lightsalmon", "khaki", "aquamarine")


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def series(records: Sequence[dict[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    """(xs, ys) of the records that have ``x``; a missing or null ``y`` is NaN (a gap)."""
    pairs = [(_number(r[x]), _number(r.get(y))) for r in records if x in r]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def metric_series(run: RunMetrics, metric: str, x: str) -> tuple[list[float], list[float], bool]:
    """(xs, ys, from evaluations) of ``metric`` in ``run``: its training records (and, for the
    loss against time, the records inside long steps) or else its evaluation records."""
    train = [r for r in run.records if r.get("kind") == "train" and metric in r]
    if metric == "loss" and x == "time":
        train = sorted(train + [r for r in run.of("inner") if metric in r], key=lambda r: _number(r.get("time")))
    if train:
        return (*series(train, x, metric), False)
    return (*series([r for r in run.of("eval") if metric in r], x, metric), True)


def phase_spans(run: RunMetrics, x: str) -> list[tuple[str, float, float]]:
    """(phase, start, end) along ``x``: each phase lasts from its record to the next one (the
    last to the run's last record); empty stretches are dropped and touching stretches of the
    same phase (a resume inside a phase) merge."""
    marks = [(str(r.get("phase")), _number(r.get(x))) for r in run.of("phase")]
    ends = [_number(r.get(x)) for r in run.records if x in r]
    last = max((v for v in ends if not math.isnan(v)), default=math.nan)
    spans: list[tuple[str, float, float]] = []
    for index, (name, start) in enumerate(marks):
        end = marks[index + 1][1] if index + 1 < len(marks) else last
        if math.isnan(start) or math.isnan(end) or end <= start:
            continue
        if spans and spans[-1][0] == name and spans[-1][2] == start:
            spans[-1] = (name, spans[-1][1], end)
        else:
            spans.append((name, start, end))
    return spans


def figure(runs: Sequence[RunMetrics], metric: str, x: str, xlabel: str) -> Any:
    """The plot of ``metric`` against ``x`` for ``runs``, with the phase lane under it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    spans = [phase_spans(run, x) for run in runs]
    lane = any(len({name for name, _s, _e in s}) > 1 for s in spans)
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    if lane:
        ax, lane_ax = fig.subplots(2, 1, sharex=True, height_ratios=[5, max(1, min(len(runs), 4))])
    else:
        ax, lane_ax = fig.subplots(), None
    values: list[float] = []
    for index, run in enumerate(runs):
        color = f"C{index % 10}"
        xs, ys, evaluated = metric_series(run, metric, x)
        style = {"marker": "o", "markersize": 3} if evaluated else {}
        ax.plot(xs, ys, color=color, linewidth=1.4, label=run.label, **style)
        values += ys
        if metric == "loss":
            ex, ey = series([r for r in run.of("eval") if EVAL_KEY in r], x, EVAL_KEY)
            ax.plot(ex, ey, linestyle="none", marker="o", markersize=5, color=color,
                    markeredgecolor="black", markeredgewidth=0.5)
            values += ey
    finite = [v for v in values if not math.isnan(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 10:
        ax.set_yscale("log")
    ax.set_ylabel(metric)
    what = "lines: training, points: evaluation" if metric == "loss" else "by run"
    ax.set_title(f"{metric} ({what})")
    ax.grid(True, which="major", alpha=0.3)
    if len(runs) > 1 or metric == "loss":
        ax.legend(loc="best", fontsize="small")
    if lane_ax is None:
        ax.set_xlabel(xlabel)
        return fig
    names = list(dict.fromkeys(name for s in spans for name, _s, _e in s))
    colors = {name: PHASE_COLORS[i % len(PHASE_COLORS)] for i, name in enumerate(names)}
    for index, run_spans in enumerate(spans):
        lane_ax.broken_barh([(start, end - start) for _n, start, end in run_spans], (index - 0.4, 0.8),
                            facecolors=[colors[name] for name, _s, _e in run_spans], edgecolor="white", linewidth=0.5)
    lane_ax.set_yticks(range(len(runs)), [run.label for run in runs], fontsize="small")
    lane_ax.set_ylim(len(runs) - 0.5, -0.5)
    lane_ax.set_xlabel(xlabel)
    lane_ax.set_title("phases", fontsize="small", loc="left")
    lane_ax.legend([Patch(color=colors[n]) for n in names], names, fontsize="small", ncols=min(len(names), 6),
                   loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False, borderaxespad=0.1)
    return fig


def file_name(metric: str, x: str) -> str:
    return f"{metric.replace('/', '-')}-vs-{x}.png"


def write_plots(runs: Sequence[RunMetrics], out_dir: Path, metrics: Sequence[str] = ("loss",)) -> list[Path]:
    """Write a PNG per metric and axis into ``out_dir``; return their paths."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise PhasetrainError(f"phasetrain report needs matplotlib ({exc}); pip install matplotlib") from None
    written = []
    for metric in metrics:
        for x, suffix, label in AXES:
            path = out_dir / file_name(metric, suffix)
            figure(runs, metric, x, label).savefig(path)
            written.append(path)
    return written
