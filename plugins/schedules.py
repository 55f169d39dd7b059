"""Built-in phase schedules: ``single`` (plain training) and ``staged`` (e.g. Adam then L-BFGS).

A schedule lists its ``phases`` and answers ``phase(trainer)`` before every step with the same
:class:`Phase` object for as long as a phase lasts; the loop fires ``phase_enter`` when the
object changes. ``steps_of(phase)`` tells learning-rate schedules how long a phase's optimizer
will run.

A stage with ``patience`` ends early once its training loss has not improved for that many steps
(an L-BFGS stage that has stalled in float32, an Adam stage that has done what it can): the
stages after it start that much earlier, and when the last stage ends so the run stops (as
"interrupted", so ``--resume`` knows it ended early and stops again at once).
"""

from __future__ import annotations

from typing import Any

import attrs

from collections.abc import Mapping, MutableMapping

from phasetrain import Component, hookimpl
from phasetrain.config import FieldValueError, LrScheduleChoice, OptimizerChoice, in_range, non_negative
from phasetrain.types import Phase


@attrs.define
class SingleOptions:
    name: str = "train"  # the phase's name in logs


class Single:
    """One phase for the whole run, stepped with the run's ``[optimizer]``."""

    def __init__(self, options: SingleOptions, ctx: Any):
        self._phase = Phase(options.name)
        self.phases = [self._phase]
        self._steps = ctx.config.run.steps

    def phase(self, trainer: Any) -> Phase:
        return self._phase

    def steps_of(self, phase: Phase) -> int:
        return self._steps


@attrs.define
class Stage:
    name: str
    steps: int = attrs.field(default=0, validator=non_negative)  # 0: the rest of the run (last stage)
    optimizer: OptimizerChoice | None = None  # None: the run's [optimizer]
    lr_schedule: LrScheduleChoice | None = None
    # End the stage once the loss has not fallen below (1 - min_improvement) x its best for this
    # many steps; 0: never.
    patience: int = attrs.field(default=0, validator=non_negative)
    min_improvement: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0))


def _stages_valid(_instance: Any, attribute: Any, stages: list[Stage]) -> None:
    if not stages:
        raise FieldValueError(attribute.name, "needs at least one stage")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise FieldValueError(attribute.name, f"stage names must be unique, got {names}")
    for stage in stages[:-1]:
        if stage.steps == 0:
            raise FieldValueError(attribute.name, f"stage {stage.name!r}: only the last stage may omit steps")


@attrs.define
class StagedOptions:
    stages: list[Stage] = attrs.field(factory=lambda: [Stage("main")], validator=_stages_valid)


class Staged:
    """Consecutive stages, each with its own steps, optimizer and learning-rate schedule.

    A stage without an optimizer uses the run's ``[optimizer]`` and shares its state with other
    such stages. The last stage may leave ``steps`` at 0 to take whatever ``run.steps`` leaves.
    """

    def __init__(self, options: StagedOptions, ctx: Any):
        total = ctx.config.run.steps
        self.stages = options.stages
        self.phases: list[Phase] = []
        self.ends: list[int] = []
        end = 0
        for stage in options.stages:
            end = end + stage.steps if stage.steps else total
            self.phases.append(Phase(stage.name, stage.optimizer, stage.lr_schedule))
            self.ends.append(end)
        self._lengths = {
            p.name: e - s for p, s, e in zip(self.phases, [0, *self.ends[:-1]], self.ends, strict=True)
        }
        self.best: float | None = None  # the best loss of stage `best_stage`, and the step it came at
        self.best_step, self.best_stage = 0, -1
        self.finished = False  # the last stage ended early: the run is over

    def _index(self, step: int) -> int:
        return next((i for i, end in enumerate(self.ends) if step < end), len(self.ends) - 1)

    def phase(self, trainer: Any) -> Phase:
        return self.phases[self._index(trainer.state.step)]

    def steps_of(self, phase: Phase) -> int:
        return max(1, self._lengths.get(phase.name, 1))

    # -- ending a stage that stopped making progress ----------------------------------------------

    @hookimpl
    def train_start(self, trainer: Any) -> None:
        if self.finished:
            trainer.request_stop("stopped")

    @hookimpl
    def post_step(self, trainer: Any, step: int, metrics: Mapping[str, Any]) -> None:
        index = self._index(step)
        stage = self.stages[index]
        if not stage.patience or metrics.get("skipped") or "loss" not in metrics:
            return
        loss = float(metrics["loss"])
        if self.best_stage != index or self.best is None or loss < self.best * (1 - stage.min_improvement):
            self.best, self.best_step, self.best_stage = loss, step, index
        elif step - self.best_step >= stage.patience:
            self._end(index, step + 1, trainer)

    def _end(self, index: int, step: int, trainer: Any) -> None:
        """End stage ``index`` at ``step``: later stages move up; after the last, the run stops."""
        if index == len(self.ends) - 1:
            self.finished = True
            trainer.request_stop("stopped")
            return
        early = self.ends[index] - step
        for j in range(index, len(self.ends)):
            if j == index or j < len(self.ends) - 1 or self.stages[j].steps:
                self.ends[j] -= early

    @hookimpl
    def checkpoint(self, state: MutableMapping[str, Any]) -> None:
        if any(stage.patience for stage in self.stages):
            state["schedule_staged"] = {"ends": list(self.ends), "best": self.best, "best_step": self.best_step,
                                        "best_stage": self.best_stage, "finished": self.finished}

    @hookimpl
    def restore(self, state: Mapping[str, Any]) -> None:
        saved = state.get("schedule_staged")
        if saved is not None:
            self.ends = [int(e) for e in saved["ends"]]
            self.best, self.best_step = saved["best"], int(saved["best_step"])
            self.best_stage, self.finished = int(saved["best_stage"]), bool(saved["finished"])


@hookimpl
def phasetrain_components() -> list[Component]:
    return [
        Component("schedule", "single", Single, SingleOptions, "plain training: one phase", default=True),
        Component("schedule", "staged", Staged, StagedOptions, "consecutive stages, each with its own optimizer"),
    ]
