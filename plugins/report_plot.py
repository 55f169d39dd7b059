"""The plots of ``phasetrain report``: loss against step and against training time.

One line per run (its train records' ``loss``), its evaluation losses as points of the same
colour, and its phases shaded when it has more than one. Drawn with matplotlib's
object-oriented API on the Agg canvas, so it never touches pyplot's global state or needs a
display.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phasetrain.errors import PhasetrainError

if TYPE_CHECKING:
    from phasetrain.plugins.report import RunMetrics

#: (file name, record field on the x axis, axis label)
PLOTS = (
    ("loss-vs-step.png", "step", "step"),
    ("loss-vs-time.png", "time", "training time since the start (s)"),
)
EVAL_KEY = "eval_loss"
#: Shades of the phases, kept apart from the runs' line colours (C0, C1, ...).
PHASE_COLORS = ("silver", "gold", "lightskyblue", "palegreen", "plum", "lightsalmon", "khaki", "aquamarine")


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def series(records: Sequence[dict[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    """(xs, ys) of the records that have ``x``; a missing or null ``y`` is NaN (a gap)."""
    pairs = [(_number(r[x]), _number(r.get(y))) for r in records if x in r]
    return [p[0] for p in pairs], [p[1] for p in pairs]


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


def _figure(runs: Sequence[RunMetrics], x: str, xlabel: str) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=(8, 5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cycle = [f"C{i}" for i in range(10)]
    phase_names = sorted({name for run in runs for name, _s, _e in phase_spans(run, x)})
    phase_color = {name: PHASE_COLORS[i % len(PHASE_COLORS)] for i, name in enumerate(phase_names)}
    shaded: set[str] = set()
    positive = True
    for index, run in enumerate(runs):
        color = cycle[index % len(cycle)]
        spans = phase_spans(run, x)
        if len({name for name, _s, _e in spans}) > 1:
            for name, start, end in spans:
                ax.axvspan(start, end, color=phase_color[name], alpha=0.35, linewidth=0)
                shaded.add(name)
        xs, ys = series(run.of("train"), x, "loss")
        ax.plot(xs, ys, color=color, linewidth=1.4, label=run.label)
        ex, ey = series([r for r in run.of("eval") if EVAL_KEY in r], x, EVAL_KEY)
        ax.plot(ex, ey, linestyle="none", marker="o", markersize=5, color=color,
                markeredgecolor="black", markeredgewidth=0.5)
        positive = positive and all(v > 0 for v in ys + ey if not math.isnan(v))
    if positive and any(run.of("train") for run in runs):
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    ax.set_title("loss (lines: training, points: evaluation)")
    ax.grid(True, which="major", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    for name in sorted(shaded):
        handles.append(Patch(color=phase_color[name], alpha=0.35))
        labels.append(f"phase {name}")
    if handles:
        ax.legend(handles, labels, loc="best", fontsize="small")
    return fig


def write_plots(runs: Sequence[RunMetrics], out_dir: Path) -> list[Path]:
    """Write both PNGs into ``out_dir``; return their paths."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise PhasetrainError(f"phasetrain report needs matplotlib ({exc}); pip install matplotlib") from None
    written = []
    for name, x, label in PLOTS:
        path = out_dir / name
        _figure(runs, x, label).savefig(path)
        written.append(path)
    return written
