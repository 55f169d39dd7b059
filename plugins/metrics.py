"""The ``jsonl`` observer: one JSON record per line in ``<run.out_dir>/metrics.jsonl``.

The format is documented in docs/metrics.md and is what ``phasetrain report`` reads. Every record
has ``kind``, ``step``, ``time`` (seconds of training since the run started, continued across
resumes), ``wall`` (Unix time) and ``phase``:

- ``"train"``: every ``every`` steps and at the last step, with ``loss``, ``lr`` and every other
  scalar number in the step's metrics;
- ``"eval"``: after each evaluation, with its metrics (``eval_loss``, ...);
- ``"phase"``: the schedule entered another phase (``previous`` names the one that ended);
- ``"event"``: a plugin reported something as it happened (``name``, e.g. a hybrid
  ``"rollback"``, and its fields);
- ``"inner"``: progress inside a long step (L-BFGS evaluates its closure many times per step):
  ``loss`` and ``evaluation`` (the closure's count in this step), at most every ``inner_every``
  seconds and only once the step has run that long;
- ``"end"``: the run ended (``status``, and ``error`` when it failed).

A resumed run keeps the records up to the step it resumes from and appends after them, so the
file reads as if the run had never stopped. Only rank 0 writes under torch.distributed.

``file`` must stay inside the run directory. A file that cannot be written (disk full, read-only)
fails the run with a one-line error naming it, leaving no temporary file behind; the run's last
checkpoint is kept. Temporary files of a crashed run are removed when the next run starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import attrs

from phasetrain import Component, hookimpl
from phasetrain.config import non_negative
from phasetrain.errors import BadInput, TrainingFailed
from phasetrain.plugins.observing import RunClock, as_number, finite_or_none, inside_run_dir, is_writer, numeric_fields

FILE = "metrics.jsonl"
#: Fields every record has; metric fields of the same name are not copied over them.
RESERVED = ("kind", "step", "time", "wall", "phase")
#: Key of this observer's state inside a checkpoint.
STATE_KEY = "metrics_jsonl"


@attrs.define
class JsonlOptions:
    """Where and how often the metrics file is written."""

    every: int = attrs.field(default=0, validator=non_negative)  # train records every N steps; 0: run.log_every
    file: str = attrs.field(default=FILE, validator=inside_run_dir)  # relative to run.out_dir
    inner_every: float = attrs.field(default=1.0, validator=non_negative)  # s between "inner" records; 0: none


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics file, in order.

    A last line that does not parse is a record cut short by a crash and is left out; any other
    line that is not a JSON object is a :class:`BadInput` naming the file and the line.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BadInput(f"{path}: cannot read ({exc.strerror or exc})") from None
    records = []
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            if index == last:
                break
            raise BadInput(f"{path}:{index + 1}: not a JSON object; is this a phasetrain metrics file?")
        records.append(record)
    return records


def encode(record: Mapping[str, Any]) -> str:
    """One record as a line of strict JSON (non-finite numbers become ``null``)."""
    return json.dumps({k: finite_or_none(v) for k, v in record.items()}, allow_nan=False)


def _write_all(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Replace ``path`` with ``records`` atomically, so a crash keeps the old file whole."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for record in records:
                f.write(encode(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise _cannot_write(path, exc) from None


def _cannot_write(path: Path, exc: OSError) -> TrainingFailed:
    return TrainingFailed(f"{path}: cannot write the metrics file ({exc.strerror or exc})")


class JsonlMetrics:
    """Writes the metrics file; see the module docstring for the records."""

    def __init__(self, options: JsonlOptions, ctx: Any):
        self.every = options.every or ctx.config.run.log_every
        self.inner_every = options.inner_every
        self.total = ctx.config.run.steps
        self.path = Path(ctx.out_dir) / options.file
        self.clock = RunClock()
        self._file: IO[str] | None = None
        self._last_train = -1  # step of the last train record written
        self._last_phase: str | None = None
        self._restored_time: float | None = None
        self._inner = (-1, 0, 0.0, 0.0)  # (step, closure evaluations, its start, last inner record)

    # -- state across resumes -------------------------------------------------------------------

    @hookimpl
    def checkpoint(self, state: Any) -> None:
        state[STATE_KEY] = {"time": self.clock.now()}

    @hookimpl
    def restore(self, trainer: Any, state: Any) -> None:
        if self._file is not None:
            # Rolled back to a checkpoint during the run: the steps after it will be run again,
            # so their records go; the clock runs on (the lost time is real time).
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = self._open(trainer.state.step)
            return
        saved = state.get(STATE_KEY)
        if isinstance(saved, Mapping) and "time" in saved:
            self._restored_time = float(saved["time"])

    # -- the run --------------------------------------------------------------------------------

    @hookimpl
    def train_start(self, trainer: Any) -> None:
        if not is_writer():
            return
        if self.path.exists() and not self.path.is_file():  # a FIFO would block reading and writing
            raise BadInput(f"{self.path}: not a regular file; cannot be the metrics file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for stale in self.path.parent.glob(f".{self.path.name}.tmp-*"):  # left by a crashed run
                stale.unlink(missing_ok=True)
        except OSError as exc:
            raise _cannot_write(self.path, exc) from None
        self._file = self._open(trainer.state.step, start_clock=True)

    def _open(self, step: int, start_clock: bool = False) -> IO[str]:
        """Keep the records up to ``step`` (none for a fresh run), then open for appending."""
        kept: list[dict[str, Any]] = []
        if step > 0 and self.path.exists():
            kept = [r for r in read_records(self.path)
                    if _step_of(r) < step or (_step_of(r) == step and r.get("kind") != "inner")]
        _write_all(self.path, kept)
        if start_clock:
            # Training time goes on from the checkpoint's, or from the last record kept if that
            # is later (an interrupted run writes its last records just after its checkpoint).
            times = [r["time"] for r in kept if isinstance(r.get("time"), (int, float))]
            self.clock.start(max([*times, self._restored_time or 0.0]))
        self._last_train = max((_step_of(r) for r in kept if r.get("kind") == "train"), default=-1)
        phases = [r.get("phase") for r in kept if r.get("kind") == "phase"]
        self._last_phase = phases[-1] if phases else None
        try:
            return open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise _cannot_write(self.path, exc) from None

    @hookimpl
    def phase_enter(self, trainer: Any, phase: Any, previous: Any) -> None:
        if self._file is None:
            return
        if previous is None and phase.name == self._last_phase:
            return  # resumed inside the phase the file already records
        before = previous.name if previous is not None else self._last_phase
        self._write("phase", trainer.state.step, phase.name, {"previous": before})
        self._last_phase = phase.name

    @hookimpl
    def event(self, trainer: Any, step: int, name: str, fields: Any) -> None:
        if self._file is None:
            return
        record: dict[str, Any] = {"name": name}
        for key, value in fields.items():
            value = value if isinstance(value, str) else as_number(value)
            if key not in RESERVED and key != "name" and value is not None:
                record[str(key)] = value
        self._write("event", step, trainer.state.phase, record)

    @hookimpl
    def after_backward(self, trainer: Any, step: int, loss: Any) -> None:
        # L-BFGS runs its closure many times in one step: inside a step that has run for a while
        # a record now and then shows its progress (a step that ends quickly writes none).
        if self._file is None or not self.inner_every:
            return
        now = time.perf_counter()
        seen, count, began, last = self._inner
        if seen != step:
            self._inner = (step, 1, now, now)
            return
        self._inner = (step, count + 1, began, last)
        if now - began >= self.inner_every and now - last >= self.inner_every:
            self._write("inner", step, trainer.state.phase, {"loss": float(loss), "evaluation": count + 1})
            self._inner = (step, count + 1, began, now)

    @hookimpl(trylast=True)
    def post_step(self, trainer: Any, step: int, metrics: Any) -> None:
        done = step + 1
        if self._file is None or (done % self.every and done != self.total):
            return
        self._write("train", done, trainer.state.phase, _train_fields(metrics))
        self._last_train = done

    @hookimpl(trylast=True)
    def eval_end(self, trainer: Any, step: int, metrics: Any) -> None:
        if self._file is None:
            return
        self._write("eval", step, trainer.state.phase, numeric_fields(metrics, RESERVED))

    @hookimpl
    def train_end(self, trainer: Any, outcome: Any) -> None:
        if self._file is None:
            return
        try:
            fields = _train_fields(outcome.metrics)
            if outcome.steps > self._last_train and fields:  # stopped between two records
                self._write("train", outcome.steps, trainer.state.phase, fields)
                self._last_train = outcome.steps
            end: dict[str, Any] = {"status": outcome.status}
            if outcome.error:
                end["error"] = outcome.error
            self._write("end", outcome.steps, trainer.state.phase, end)
        except TrainingFailed as exc:  # train_end must not hide how the run ended
            if outcome.status != "failed":
                print(f"phasetrain: warning: {exc}; the last records are missing", file=sys.stderr)
        finally:
            file, self._file = self._file, None
            with contextlib.suppress(OSError):
                file.close()

    def _write(self, kind: str, step: int, phase: str, fields: Mapping[str, Any]) -> None:
        assert self._file is not None
        record = {"kind": kind, "step": step, "time": round(self.clock.now(), 6),
                  "wall": round(time.time(), 6), "phase": phase, **fields}
        try:
            self._file.write(encode(record) + "\n")
            self._file.flush()  # a crash loses at most the record being written
        except OSError as exc:
            raise _cannot_write(self.path, exc) from None


def _step_of(record: Mapping[str, Any]) -> int:
    step = record.get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else 0


def _train_fields(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``loss`` and ``lr`` first (when present), then the other scalar numbers."""
    fields = numeric_fields(metrics, RESERVED)
    ordered = {k: fields.pop(k) for k in ("loss", "lr") if k in fields}
    return {**ordered, **fields}


@hookimpl
def phasetrain_components() -> list[Component]:
    return [
        Component("observer", "jsonl", JsonlMetrics, JsonlOptions,
                  "metrics file: one JSON record per logged step, evaluation and phase change", default=True),
    ]
