"""Early stopping: the ``[early_stopping]`` kind, declared here, and its ``patience`` component.

After every evaluation (``eval_end``) it reads the monitored metric; when ``patience``
evaluations in a row have not improved on the best value by more than ``min_delta``, it asks the
loop to stop (``trainer.request_stop("stopped")``) and fires an ``early_stop`` event. The loop then
finishes the step, checkpoints and ends the run with status ``"interrupted"`` (stopped before
``run.steps``). Under torchrun every process sees the same metrics (they are computed over the
whole validation set), so all stop at the same step. Its state (best value, evaluations waited)
is checkpointed, so a resumed run stops where the uninterrupted one would have.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from typing import Any

import attrs

from phasetrain import Component, hookimpl
from phasetrain.config import non_negative, one_of, positive
from phasetrain.errors import ConfigError
from phasetrain.registry import Kind

KEY = "early_stopping"  # this plugin's key in checkpoint state


@attrs.define
class PatienceOptions:
    monitor: str = "eval_loss"  # the evaluation metric to watch
    mode: str = attrs.field(default="min", validator=one_of("min", "max"))  # min: lower is better
    patience: int = attrs.field(default=3, validator=positive)  # evaluations without improvement before stopping
    min_delta: float = attrs.field(default=0.0, validator=non_negative)  # smaller improvements do not count


def better(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` improves on ``best`` by more than ``min_delta`` (NaN never does)."""
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


@attrs.define
class Plateau:
    """The numbers of early stopping: ``update(value)`` is True when it is time to stop."""

    mode: str
    patience: int
    min_delta: float = 0.0
    best: float | None = None
    waited: int = 0

    def update(self, value: float) -> bool:
        if better(value, self.best, self.mode, self.min_delta):
            self.best, self.waited = value, 0
        else:
            self.waited += 1
        return self.waited >= self.patience


def monitored(metrics: Mapping[str, Any], monitor: str, field: str, source: str) -> float:
    """The monitored value of an evaluation; an error naming ``field`` if it is not there."""
    if monitor not in metrics:
        names = ", ".join(k for k in metrics if k != "step") or "none: the task does not evaluate"
        raise ConfigError(source, field, f"{monitor!r} is not among the evaluation metrics ({names})")
    return float(metrics[monitor])


def needs_evaluations(ctx: Any, section: str) -> None:
    if not ctx.config.run.eval_every:
        raise ConfigError(ctx.config.source, "run.eval_every",
                          f"must be > 0 with [{section}]: it decides after evaluations, and 0 evaluates at the end only")


class Patience:
    """Stop when the monitored metric has stopped improving (see the module docstring)."""

    def __init__(self, options: PatienceOptions, ctx: Any):
        needs_evaluations(ctx, KEY)
        self.options, self.source = options, ctx.config.source
        self.plateau = Plateau(options.mode, options.patience, options.min_delta)

    @hookimpl
    def eval_end(self, trainer: Any, step: int, metrics: Mapping[str, Any]) -> None:
        value = monitored(metrics, self.options.monitor, f"{KEY}.monitor", self.source)
        if self.plateau.update(value) and not trainer.stop_requested:
            trainer.request_stop("stopped")
            o = self.options
            trainer.pm.hook.event(
                trainer=trainer, step=step, name="early_stop",
                message=f"early stopping at step {step}: {o.monitor} has not improved on {self.plateau.best:.6g} "
                        f"for {self.plateau.waited} evaluations",
                fields={"monitor": o.monitor, "best": self.plateau.best, "waited": self.plateau.waited})

    @hookimpl
    def checkpoint(self, state: MutableMapping[str, Any]) -> None:
        state[KEY] = {"best": self.plateau.best, "waited": self.plateau.waited}

    @hookimpl
    def restore(self, state: Mapping[str, Any]) -> None:
        if (saved := state.get(KEY)) is not None:
            self.plateau.best, self.plateau.waited = saved["best"], int(saved["waited"])


@hookimpl
def phasetrain_kinds() -> list[Kind]:
    return [Kind(KEY, "stop a run when an evaluation metric stops improving", resumable=True,
                 contracts="phasetrain.plugins.selection_contracts")]


@hookimpl
def phasetrain_components() -> list[Component]:
    return [Component(KEY, "patience", Patience, PatienceOptions,
                      "stop after `patience` evaluations without improvement of `monitor`")]
