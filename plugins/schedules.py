"""Built-in phase schedules: ``single`` (plain training) and ``staged`` (e.g. Adam then L-BFGS).

A schedule lists its ``phases`` and answers ``phase(trainer)`` before every step with the same
:class:`Phase` object for as long as a phase lasts; the loop fires ``phase_enter`` when the
object changes. ``steps_of(phase)`` tells learning-rate schedules how long a phase's optimizer
will run.
"""

from __future__ import annotations

from typing import Any

import attrs

from phasetrain import Component, hookimpl
from phasetrain.config import FieldValueError, LrScheduleChoice, OptimizerChoice, non_negative
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

    def phase(self, trainer: Any) -> Phase:
        step = trainer.state.step
        for phase, end in zip(self.phases, self.ends, strict=True):
            if step < end:
                return phase
        return self.phases[-1]

    def steps_of(self, phase: Phase) -> int:
        return max(1, self._lengths.get(phase.name, 1))


@hookimpl
def phasetrain_components() -> list[Component]:
    return [
        Component("schedule", "single", Single, SingleOptions, "plain training: one phase", default=True),
        Component("schedule", "staged", Staged, StagedOptions, "consecutive stages, each with its own optimizer"),
    ]
