"""The console observer: progress while training and a summary at the end.

Progress goes through ``rich.progress`` (docs/decisions.md says why rich and not tqdm). On a
terminal it is a live display, redrawn a few times a second at the terminal's current width
(so a resize is followed), with messages (evaluations, phase changes, events) printed above it
instead of through it. A run whose schedule has stages of known length (``staged``: Adam then
L-BFGS) shows two rows, the run and its current stage::

    run    ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╸━━━━  91%  2007/2200  0:01:45
    lbfgs  ━╺━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━   3%     7/200   0:00:31  eta 0:31:02  loss 0.0012  lr 1

The ETA comes from the recent rate (the last ``WINDOW`` seconds) of the current stage, so a
cheap first stage does not make a slow second one look short; in a stage that is not the last
it is the time to the end of the stage, followed by the stages still to come (``+lbfgs``),
whose speed nobody knows yet. Without stages (one phase, or the hybrid schedule's interleaved
phases) it is one row for the run, named after the current phase.

When the output is not a terminal, progress is a plain line every ``every`` steps (no carriage
returns, no colours), so logs stay readable in files and CI. ``bar = "always"`` or ``"never"``
overrides the terminal check; ``quiet`` keeps only the summary.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import attrs

from phasetrain import Component, hookimpl
from phasetrain.config import non_negative, one_of
from phasetrain.types import KnowsPhaseLengths


@attrs.define
class ConsoleOptions:
    every: int = attrs.field(default=0, validator=non_negative)  # plain lines every N steps; 0: run.log_every
    bar: str = attrs.field(default="auto", validator=one_of("auto", "always", "never"))  # auto: on a terminal
    quiet: bool = False  # only the summary


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _number(value: Any) -> Any:
    """A 0-dim tensor as a Python number (synchronises its device: only when printing)."""
    return value.item() if hasattr(value, "item") else value


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    seconds = int(max(0, seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def rate(task: Any) -> float | None:
    """Steps per second of a rich task: over its recent window, or, while the window holds too
    few steps (steps longer than the window), over everything since the task began."""
    if task.speed:
        return task.speed
    done = task.completed - task.fields.get("first", 0)
    return done / task.elapsed if done > 0 and task.elapsed else None


def eta_seconds(task: Any) -> float | None:
    """Seconds until ``task`` completes at its :func:`rate` (None while unknown)."""
    if task.finished:
        return 0.0
    speed = rate(task)
    return task.remaining / speed if speed else None


def eta_text(task: Any) -> str:
    """``eta H:MM:SS`` of a rich task, with the stages still to come after it (``+lbfgs``)."""
    later = task.fields.get("later", "")
    return f"eta {_clock(eta_seconds(task))}" + (f" +{later}" if later else "")


def _columns() -> tuple[Any, ...]:
    from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class Eta(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(eta_text(task) if task.fields.get("eta", True) else "", style="progress.remaining")

    return (TextColumn("{task.description}"), BarColumn(bar_width=None), TaskProgressColumn(),
            MofNCompleteColumn(), TimeElapsedColumn(), Eta(), TextColumn("{task.fields[status]}", markup=False))


class Console:
    WINDOW = 30.0  # seconds of recent steps the rate (and so the ETA) is measured over
    FLUSH = 0.1  # seconds between two updates of the progress tasks
    REFRESH = 4  # redraws of the live display per second

    def __init__(self, options: ConsoleOptions, ctx: Any, stream: TextIO | None = None, clock: Any = None):
        self.options = options
        self._stream = stream
        self.every = options.every or ctx.config.run.log_every
        self.total = ctx.config.run.steps
        self.clock = clock or time.monotonic  # tests pass a simulated one
        self.live = False  # a live display (decided at train_start: the stream may be redirected)
        self.progress: Any = None
        self.run_task: Any = None
        self.stage_task: Any = None
        self.stages: list[str] = []  # names of the stages, when the schedule has several of known length
        self.lengths: dict[str, int] = {}
        self.started = False
        self._pending = 0  # steps not yet handed to the progress tasks
        self._flushed = 0.0  # clock of the last update
        self._status = ""

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout  # looked up late, so redirections apply

    def _print(self, text: str) -> None:
        if self.live:
            self.progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    # -- the run --------------------------------------------------------------------------------

    @hookimpl
    def train_start(self, trainer: Any) -> None:
        self.started = True
        if self.options.quiet:
            return
        from rich.console import Console as RichConsole
        from rich.progress import Progress

        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.live = self.options.bar == "always" or (self.options.bar == "auto" and tty)
        console = RichConsole(file=self._stream, force_terminal=True if self.live else None, highlight=False)
        self.progress = Progress(*_columns(), console=console, get_time=self.clock, disable=not self.live,
                                 auto_refresh=self.live, refresh_per_second=self.REFRESH,
                                 speed_estimate_period=self.WINDOW)
        schedule = trainer.schedule
        if isinstance(schedule, KnowsPhaseLengths) and len(schedule.phases) > 1:
            self.stages = [p.name for p in schedule.phases]
            self.lengths = {p.name: schedule.steps_of(p) for p in schedule.phases}
        name = "run" if self.stages else (trainer.state.phase or schedule.phases[0].name)
        self.run_task = self.progress.add_task(name, total=self.total, completed=trainer.state.step,
                                               first=trainer.state.step, eta=not self.stages, status="")
        self._flushed = self.clock()
        params = sum(p.numel() for p in trainer.model.parameters())
        what = f"resuming at step {trainer.state.step}" if trainer.state.step else "training"
        self._print(f"phasetrain: {what} {trainer.config.task.use} ({params:,} parameters) on "
                    f"{trainer.device} for {self.total} steps -> {trainer.out_dir}")
        self.progress.start()

    @hookimpl
    def phase_enter(self, trainer: Any, phase: Any, previous: Any) -> None:
        if self.progress is None:
            return
        self._flush()
        if previous is not None:
            self._print(f"phase {previous.name} -> {phase.name} at step {trainer.state.step}")
        if not self.stages:
            self.progress.update(self.run_task, description=phase.name)
            return
        if self.stage_task is not None:
            self.progress.update(self.stage_task, visible=False)
        later = self.stages[self.stages.index(phase.name) + 1:] if phase.name in self.stages else []
        self.stage_task = self.progress.add_task(phase.name, total=self.lengths.get(phase.name, self.total),
                                                 completed=trainer.state.phase_step, first=trainer.state.phase_step,
                                                 later="+".join(later), status="")

    @hookimpl
    def event(self, message: str) -> None:
        if self.progress is not None:
            self._print(message)

    @hookimpl(trylast=True)
    def post_step(self, trainer: Any, step: int, metrics: Any) -> None:
        if self.progress is None:
            return
        self._pending += 1
        done = step + 1
        due = not done % self.every or done == self.total
        if due or self.clock() - self._flushed >= self.FLUSH:
            self._status = "  ".join(f"{k} {_fmt(_number(metrics[k]))}" for k in ("loss", "lr") if k in metrics)
            self._flush()
        if due and not self.live:
            self._print(self.line(trainer, done, metrics))

    def _flush(self) -> None:
        now_task = self.stage_task if self.stage_task is not None else self.run_task
        if self._pending:
            self.progress.update(self.run_task, advance=self._pending)
            if self.stage_task is not None:
                self.progress.update(self.stage_task, advance=self._pending)
        self.progress.update(now_task, status=self._status)
        self._pending, self._flushed = 0, self.clock()

    def current(self) -> Any:
        """The rich task whose rate gives the ETA: the current stage's, else the run's."""
        return self.progress.tasks[self.stage_task if self.stage_task is not None else self.run_task]

    def line(self, trainer: Any, done: int, metrics: Any) -> str:
        """The plain progress line: every metric, the rate of the current stage and its ETA."""
        task, run = self.current(), self.progress.tasks[self.run_task]
        fields = " ".join(f"{k} {_fmt(_number(v))}" for k, v in metrics.items() if k != "phase")
        return (f"step {done}/{self.total} [{trainer.state.phase}] {run.percentage:.0f}% {fields} "
                f"| {_clock(run.elapsed)} elapsed, {rate(task) or 0.0:.1f} steps/s, "
                f"{eta_text(task).replace('eta', 'ETA', 1)}")

    @hookimpl(trylast=True)
    def eval_end(self, trainer: Any, step: int, metrics: Any) -> None:
        if self.progress is not None:
            shown = " ".join(f"{k} {_fmt(v)}" for k, v in metrics.items() if k != "step")
            self._print(f"eval at step {step}: {shown}")

    @hookimpl
    def train_end(self, trainer: Any, outcome: Any) -> None:
        if self.progress is not None:
            self._flush()
            self.progress.stop()
            self.live, self.progress, self.stage_task = False, None, None
        if not self.started:  # refused before it began (a locked directory...): the error says why
            return
        lines = [
            "",
            f"== phasetrain summary ({outcome.status}) ==",
            f"task        {trainer.config.task.use}",
            f"steps       {outcome.steps}",
            f"time        {outcome.seconds:.1f} s ({outcome.steps / max(outcome.seconds, 1e-9):.1f} steps/s)",
        ]
        if "loss" in outcome.metrics:
            lines.append(f"final loss  {_fmt(outcome.metrics['loss'])}")
        for key, value in outcome.eval.items():
            if key != "step":
                lines.append(f"{key:<11} {_fmt(value)}")
        if outcome.error:
            lines.append(f"error       {outcome.error}")
        lines.append(f"run dir     {outcome.run_dir or trainer.out_dir}")
        self._print("\n".join(lines))


@hookimpl
def phasetrain_components() -> list[Component]:
    return [Component("observer", "console", Console, ConsoleOptions,
                      "progress (rich) on a terminal, plain lines otherwise, and a summary", default=True)]
