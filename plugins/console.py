"""The console observer: progress while training and a summary at the end.

On a terminal it redraws one progress bar (step, phase, loss, steps/s, ETA) in place with ``\r``,
at every ``every`` steps and at most every ``REDRAW`` seconds in between, cut to the terminal's
width so it never wraps; otherwise it prints a plain line with every metric every ``every``
steps, so logs stay readable in files and CI. ``bar = "always"`` or ``"never"`` overrides the
terminal check; ``quiet`` keeps only the summary.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any, TextIO

import attrs

from phasetrain import Component, hookimpl
from phasetrain.config import non_negative, one_of


@attrs.define
class ConsoleOptions:
    every: int = attrs.field(default=0, validator=non_negative)  # 0: run.log_every
    bar: str = attrs.field(default="auto", validator=one_of("auto", "always", "never"))  # auto: on a terminal
    quiet: bool = False  # only the summary


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _number(value: Any) -> Any:
    """A 0-dim tensor as a Python number (synchronises its device: only when printing)."""
    return value.item() if hasattr(value, "item") else value


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Console:
    REDRAW = 0.25  # seconds between two redraws of the bar

    def __init__(self, options: ConsoleOptions, ctx: Any, stream: TextIO | None = None):
        self.options = options
        self._stream = stream
        self.every = options.every or ctx.config.run.log_every
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()  # noqa: decided once
        self.bar = options.bar == "always" or (options.bar == "auto" and tty)
        self.width = shutil.get_terminal_size((100, 24)).columns - 1 if self.bar else 0
        self.total = ctx.config.run.steps
        self._t0 = 0.0
        self._step0 = 0
        self._bar_open = False
        self._drawn = 0.0  # perf_counter of the last redraw
        self._bar_len = 0  # length of the bar line on screen, to blank what a shorter one leaves

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout  # looked up late, so redirections apply

    def _print(self, text: str) -> None:
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False
            self._bar_len = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    @hookimpl
    def train_start(self, trainer: Any) -> None:
        self._t0, self._step0 = time.perf_counter(), trainer.state.step
        if not self.options.quiet:
            params = sum(p.numel() for p in trainer.model.parameters())
            what = f"resuming at step {trainer.state.step}" if trainer.state.step else "training"
            self._print(
                f"phasetrain: {what} {trainer.config.task.use} ({params:,} parameters) on "
                f"{trainer.device} for {self.total} steps -> {trainer.out_dir}"
            )

    @hookimpl
    def phase_enter(self, trainer: Any, phase: Any, previous: Any) -> None:
        if not self.options.quiet and previous is not None:
            self._print(f"phase {previous.name} -> {phase.name} at step {trainer.state.step}")

    @hookimpl
    def event(self, message: str) -> None:
        if not self.options.quiet:
            self._print(message)

    @hookimpl(trylast=True)
    def post_step(self, trainer: Any, step: int, metrics: Any) -> None:
        done = step + 1
        if self.options.quiet:
            return
        due = not done % self.every or done == self.total
        if self.bar:
            now = time.perf_counter()
            if due or now - self._drawn >= self.REDRAW:
                self._drawn = now
                self._draw_bar(trainer.state.phase, done, metrics, now)
        elif due:
            rate, eta = self._speed(done, time.perf_counter())
            fields = " ".join(f"{k} {_fmt(_number(v))}" for k, v in metrics.items() if k != "phase")
            phase = trainer.state.phase
            self._print(f"step {done}/{self.total} [{phase}] {fields} ({rate:.1f} steps/s, ETA {_clock(eta)})")

    def _speed(self, done: int, now: float) -> tuple[float, float]:
        """Steps per second since this fit() started, and the seconds left at that rate."""
        elapsed = now - self._t0
        rate = (done - self._step0) / elapsed if elapsed > 0 else 0.0
        return rate, (self.total - done) / rate if rate > 0 else 0.0

    def _draw_bar(self, phase: str, done: int, metrics: Any, now: float) -> None:
        rate, eta = self._speed(done, now)
        size = 24
        filled = int(size * done / self.total)
        loss = f" loss {_fmt(_number(metrics['loss']))}" if "loss" in metrics else ""
        line = (f"[{'#' * filled}{'-' * (size - filled)}] {done}/{self.total} {phase}{loss} "
                f"{rate:.1f} steps/s ETA {_clock(eta)}")[: self.width]
        self.stream.write("\r" + line.ljust(self._bar_len))
        self.stream.flush()
        self._bar_len = len(line)
        self._bar_open = True

    @hookimpl(trylast=True)
    def eval_end(self, trainer: Any, step: int, metrics: Any) -> None:
        if not self.options.quiet:
            shown = " ".join(f"{k} {_fmt(v)}" for k, v in metrics.items() if k != "step")
            self._print(f"eval at step {step}: {shown}")

    @hookimpl
    def train_end(self, trainer: Any, outcome: Any) -> None:
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
        lines.append(f"run dir     {trainer.out_dir}")
        self._print("\n".join(lines))


@hookimpl
def phasetrain_components() -> list[Component]:
    return [Component("observer", "console", Console, ConsoleOptions, "progress bar or lines, and a summary", default=True)]
