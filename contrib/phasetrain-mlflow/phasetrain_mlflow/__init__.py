"""The ``mlflow`` observer: a phasetrain run as an MLflow run, in any tracking store.

Turn it on with a config section (or ``--set 'observers.mlflow={tracking_uri="sqlite:///mlruns.db"}'``)::

    [observers.mlflow]
    tracking_uri = "sqlite:///mlruns.db"   # "": MLFLOW_TRACKING_URI, else MLflow's default
    experiment = "phasetrain"

What it logs, on the main process only:

- params: the resolved config, flattened (``optimizer.lr``, ``task.use``, ...), when a run starts;
- metrics: ``train/<field>`` (``loss``, ``lr`` and every other number a step reports) every
  ``every`` steps, ``eval/<field>`` after every evaluation, ``train/phase`` (the phase's index)
  at each change of phase and ``events/<name>`` (a running count) at each event a plugin fires;
  they are sent in batches from MLflow's own background thread, so a step does not wait on the
  store;
- tags: ``phasetrain.run_dir``, ``phasetrain.config_hash``, ``phasetrain.phases``;
- artifacts at the end: the final checkpoint under ``checkpoint/`` (``phasetrain.load_model``
  reads the downloaded directory), ``events.json`` (every phase change and event), and the
  ``phasetrain report`` PNGs of the run under ``report/``.

A resumed run continues the same MLflow run: its id travels in the checkpoint. The MLflow run
ends ``FINISHED``, ``KILLED`` (interrupted) or ``FAILED``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from phasetrain import Component, hookimpl
from phasetrain.config import non_negative, positive
from phasetrain.plugins.observing import flatten_config, is_writer, numeric_fields, phase_number

STATE_KEY = "mlflow"
STATUS = {"completed": "FINISHED", "stopped": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}


@attrs.define
class MlflowOptions:
    """Where the run is tracked and what is sent."""

    tracking_uri: str = ""  # "": MLFLOW_TRACKING_URI, else MLflow's default (./mlruns)
    experiment: str = "phasetrain"  # created when missing
    artifact_location: str = ""  # of a new experiment; "": the store's default
    run_name: str = ""  # "": the run directory's name, e.g. regression/version_3
    every: int = attrs.field(default=0, validator=non_negative)  # train metrics every N steps; 0: run.log_every
    flush_every: float = attrs.field(default=5.0, validator=positive)  # seconds between batches sent to the store
    log_checkpoint: bool = True  # the final checkpoint as artifacts under checkpoint/
    log_report: bool = True  # the report PNGs of the run as artifacts under report/


class MlflowObserver:
    """Sends a run to MLflow; see the module docstring."""

    def __init__(self, options: MlflowOptions, ctx: Any):
        self.options = options
        self.every = options.every or ctx.config.run.log_every
        self.total = ctx.config.run.steps
        self.client: Any = None
        self.run_id: str | None = None  # set by restore when the run resumes
        self.buffer: list[Any] = []
        self.pending: list[Any] = []  # batches MLflow is still sending
        self.flushed = time.perf_counter()
        self.phases: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}
        self.checkpoint_path: Path | None = None

    # -- the MLflow run, continued across resumes -------------------------------------------------

    @hookimpl
    def checkpoint(self, state: Any) -> None:
        if self.run_id is not None:
            state[STATE_KEY] = {"run_id": self.run_id, "phases": list(self.phases), "counts": dict(self.counts)}

    @hookimpl
    def restore(self, state: Any) -> None:
        saved = state.get(STATE_KEY)
        if isinstance(saved, Mapping) and self.client is None:  # a resume, not a rollback mid-run
            self.run_id = str(saved["run_id"])
            self.phases = [str(p) for p in saved.get("phases", [])]
            self.counts = {str(k): int(v) for k, v in dict(saved.get("counts", {})).items()}

    @hookimpl
    def train_start(self, trainer: Any) -> None:
        if not is_writer():
            return
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.client = MlflowClient(tracking_uri=self.options.tracking_uri or None)
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(self.options.experiment)
        experiment = found.experiment_id if found is not None else self.client.create_experiment(
            self.options.experiment, artifact_location=self.options.artifact_location or None)
        out = Path(trainer.out_dir)
        tags = {"phasetrain.run_dir": str(out.resolve()), "phasetrain.config_hash": trainer.config.hash()}
        run = self.client.create_run(experiment, run_name=self.options.run_name or f"{out.parent.name}/{out.name}",
                                     tags=tags)
        self.run_id = run.info.run_id
        params = [Param(k, str(v)) for k, v in flatten_config(trainer.config.to_dict()).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    # -- metrics ----------------------------------------------------------------------------------

    def _add(self, prefix: str, fields: Mapping[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.buffer += [Metric(f"{prefix}/{k}", float(v), now, step) for k, v in fields.items()]
        if len(self.buffer) >= 900 or time.perf_counter() - self.flushed >= self.options.flush_every:
            self.flush()

    def flush(self, wait: bool = False) -> None:
        """Hand the buffered metrics to MLflow's background sender (``wait``: and wait for all)."""
        if self.client is not None and self.buffer:
            self.pending.append(self.client.log_batch(self.run_id, metrics=self.buffer, synchronous=False))
            self.buffer = []
        self.flushed = time.perf_counter()
        if wait:  # a batch that failed to send raises here
            for operation in self.pending:
                operation.wait()
            self.pending = []

    @hookimpl(trylast=True)
    def post_step(self, trainer: Any, step: int, metrics: Any) -> None:
        done = step + 1
        if self.client is None or (done % self.every and done != self.total):
            return
        self._add("train", numeric_fields(metrics, ("step", "phase")), done)

    @hookimpl(trylast=True)
    def eval_end(self, step: int, metrics: Any) -> None:
        if self.client is not None:
            self._add("eval", numeric_fields(metrics, ("step",)), step)

    @hookimpl
    def phase_enter(self, trainer: Any, phase: Any, previous: Any) -> None:
        if self.client is None:
            return
        number = phase_number(self.phases, phase, previous)
        if number is None:
            return
        step = trainer.state.step
        self.events.append({"step": step, "name": "phase", "phase": phase.name,
                            "previous": previous.name if previous is not None else None})
        self._add("train", {"phase": number}, step)
        self.client.set_tag(self.run_id, "phasetrain.phases", " -> ".join(self.phases))

    @hookimpl
    def event(self, step: int, name: str, message: str, fields: Any) -> None:
        if self.client is None:
            return
        self.counts[name] = self.counts.get(name, 0) + 1
        self.events.append({"step": step, "name": name, "message": message,
                            **{str(k): v for k, v in numeric_fields(fields).items()}})
        self._add("events", {name: self.counts[name]}, step)

    # -- the end ----------------------------------------------------------------------------------

    @hookimpl
    def save_end(self, path: Any) -> None:
        self.checkpoint_path = Path(path)

    @hookimpl
    def train_end(self, trainer: Any, outcome: Any) -> None:
        if self.client is None:
            return
        try:
            self.flush(wait=True)
            if self.events:
                self.client.log_dict(self.run_id, {"events": self.events}, "events.json")
            if self.options.log_checkpoint and self.checkpoint_path is not None and self.checkpoint_path.is_dir():
                self.client.log_artifacts(self.run_id, str(self.checkpoint_path), "checkpoint")
            if self.options.log_report:
                self._log_report(Path(trainer.out_dir))
        finally:
            self.client.set_terminated(self.run_id, status=STATUS.get(outcome.status, "FAILED"))
            self.client = None

    def _log_report(self, run_dir: Path) -> None:
        from phasetrain.plugins import report_plot
        from phasetrain.plugins.metrics import FILE
        from phasetrain.plugins.report import load_runs

        if not (run_dir / FILE).is_file():
            return  # the jsonl observer is off: nothing to plot
        with tempfile.TemporaryDirectory() as tmp:
            report_plot.write_plots(load_runs([str(run_dir)]), Path(tmp))
            self.client.log_artifacts(self.run_id, tmp, "report")


@hookimpl
def phasetrain_components() -> list[Component]:
    return [Component("observer", "mlflow", MlflowObserver, MlflowOptions,
                      "MLflow tracking: params, metrics, phases, events, checkpoint and report artifacts")]
