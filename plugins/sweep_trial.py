"""A sweep's trial, seen from inside its run: the ``optuna`` observer, the study's storage and
its pruner, and the trial's result as its metrics file tells it.

The sweep starts each trial as ``phasetrain run ... --set observers.optuna={...}`` when it prunes:
the observer reports the trial's evaluation metric to the study after every evaluation and asks
``trainer.request_stop()`` when the pruner says so. Optuna does not store pruners with a study,
so both sides build the one the sweep names with :func:`make_pruner`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import attrs

from phasetrain import hookimpl
from phasetrain.config import one_of
from phasetrain.errors import ConfigError
from phasetrain.plugins.sweep_space import require_optuna

STUDY_NAME = "phasetrain"


def open_storage(url: str) -> Any:
    """Optuna's storage at ``url``, waiting up to a minute for SQLite's lock: with ``--jobs N``
    the sweep's threads and N trials' reports write to one file at once."""
    optuna = require_optuna()
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})


def make_pruner(name: str) -> Any:
    """The pruner a sweep names: ``median`` (Optuna's MedianPruner, after 5 finished trials),
    ``hyperband`` or ``none``."""
    optuna = require_optuna()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5)
    return optuna.pruners.HyperbandPruner() if name == "hyperband" else optuna.pruners.NopPruner()


def final_value(metrics_file: Path, metric: str) -> tuple[float | None, int, str]:
    """From a trial's metrics file: its last evaluation's ``metric``, the steps it ran and how it
    ended (``completed``, ``interrupted``, ...)."""
    from phasetrain.plugins.metrics import read_records

    records = read_records(metrics_file) if metrics_file.is_file() else []
    values = [r[metric] for r in records if r.get("kind") == "eval" and isinstance(r.get(metric), (int, float))]
    steps = max((r["step"] for r in records if isinstance(r.get("step"), int)), default=0)
    ends = [r.get("status") for r in records if r.get("kind") == "end"]
    return (float(values[-1]) if values else None), steps, str(ends[-1] if ends else "unfinished")


@attrs.define
class OptunaOptions:
    storage: str = ""  # the study's storage URL (set by phasetrain sweep); "": report nothing
    trial: int = attrs.field(default=-1)  # the trial's id in the storage
    metric: str = "eval_loss"  # the evaluation metric reported after every evaluation
    pruner: str = attrs.field(default="median", validator=one_of("median", "hyperband", "none"))  # the sweep's


class TrialReporter:
    """The ``optuna`` observer of a sweep's trial (``phasetrain sweep`` configures it; with no
    ``storage`` it does nothing)."""

    def __init__(self, options: OptunaOptions, ctx: Any):
        self.options, self.trial, self.last = options, None, None
        if not options.storage:
            return
        if options.trial < 0:
            raise ConfigError(ctx.config.source, "observers.optuna.trial", "is required with a storage: the trial's "
                                                                            "id (phasetrain sweep sets both)")
        optuna = require_optuna()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # The pruner is not stored with the study: the sweep names it and each trial builds it.
        study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(options.storage),
                                  pruner=make_pruner(options.pruner))
        self.trial = optuna.trial.Trial(study, options.trial)

    @hookimpl(trylast=True)
    def eval_end(self, trainer: Any, step: int, metrics: Any) -> None:
        value = metrics.get(self.options.metric)
        if self.trial is None or value is None:
            return
        self.last = float(value)
        if step >= trainer.config.run.steps or not math.isfinite(self.last):
            return  # the final value is the trial's result, not an intermediate one
        self.trial.report(self.last, step)
        if self.trial.should_prune():
            self.trial.set_user_attr("pruned_at", step)
            trainer.pm.hook.event(trainer=trainer, step=step, name="pruned", fields={"value": self.last},
                                  message=f"pruned at step {step}: {self.options.metric} {self.last:.4g}")
            trainer.request_stop()
