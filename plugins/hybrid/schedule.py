"""The ``hybrid`` schedule: Warmup -> Full -> Predict -> Correct, with rollback.

Rules (``HybridController.next_phase`` implements them; it is pure and tested on synthetic
sequences):

1. ``warmup`` for the first ``warmup_steps`` steps: real steps; the dynamics model observes.
2. ``full``: real steps; the dynamics model keeps learning and is scored on real steps it had not
   seen. After at least ``min_full_steps`` here, and when ``confidence >= confidence_threshold``,
   go to ``predict`` (only if the run has room for the predicted stretch and a correction).
3. ``predict``: predicted updates, no backward pass, no optimizer step, no data loading. Every
   ``loss_check_every`` steps a forward-only loss on a fixed probe batch; the weights with the
   lowest checked loss so far are kept aside, and a rise of more than ``abort_tolerance``
   (relative) above that lowest loss ends the stretch early. At most ``budget`` steps; the budget
   starts at ``initial_predict_steps``, grows by half after a clean stretch and halves after an
   abort or a rollback, within [1, ``max_predict_steps``].
4. ``correct``: on entry the probe loss is measured once more. If a loss check inside the
   stretch was lower than both this loss and the loss at Predict entry, the weights return to
   that checked point (the stretch overshot: a line search along the predicted trajectory).
   Otherwise, worse than at Predict entry by more than ``rollback_tolerance`` (relative) -> the
   weights go back to the snapshot taken at Predict entry and the dynamics model's confidence is
   cut. Then ``correct_steps`` real steps, which the dynamics model observes, after which
   ``predict`` again if confident, else ``full``.

The optimizer's moment buffers are left untouched during Predict (no optimizer step runs): after
a stretch of predicted steps, Adam continues from the moments of the last real step. They
describe gradients at nearby weights, which is what Correct needs; a rollback restores the
weights they belong to. docs/hybrid.md discusses the choice.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch

from phasetrain import Component, hookimpl
from phasetrain.config import at_least, non_negative, positive
from phasetrain.plugins.hybrid.probe import probe_batches, probe_loss
from phasetrain.registry import Kind
from phasetrain.types import Phase

PHASES = ("warmup", "full", "predict", "correct")


@attrs.define
class HybridOptions:
    warmup_steps: int = attrs.field(default=50, validator=non_negative)
    min_full_steps: int = attrs.field(default=20, validator=non_negative)
    confidence_threshold: float = attrs.field(default=0.5, validator=non_negative)
    initial_predict_steps: int = attrs.field(default=4, validator=positive)
    max_predict_steps: int = attrs.field(default=32, validator=positive)
    loss_check_every: int = attrs.field(default=8, validator=positive)
    abort_tolerance: float = attrs.field(default=0.05, validator=non_negative)
    correct_steps: int = attrs.field(default=8, validator=positive)
    rollback_tolerance: float = attrs.field(default=0.0, validator=non_negative)
    rollback_penalty: float = attrs.field(default=0.5, validator=at_least(0.0))  # confidence x this
    force_confidence: float = -1.0  # >= 0: use this instead of the dynamics model's (for tests)


@attrs.define
class HybridController:
    """The phase rules as a small state machine over numbers only."""

    options: HybridOptions
    total_steps: int
    phase: str = "warmup"
    phase_step: int = 0
    budget: int = 0
    aborted: bool = False
    rolled_back: bool = False

    def __attrs_post_init__(self) -> None:
        self.budget = min(self.options.initial_predict_steps, self.options.max_predict_steps)

    def next_phase(self, step: int, confidence: float) -> str:
        """The phase of step ``step`` (0-based) given the current ``confidence``."""
        o = self.options
        new = self.phase
        if self.phase == "warmup":
            if step >= o.warmup_steps:
                new = "full"
        elif self.phase == "full":
            if self.phase_step >= o.min_full_steps and self._may_predict(step, confidence):
                new = "predict"
        elif self.phase == "predict":
            if self.aborted or self.phase_step >= self.budget:
                new = "correct"
        elif self.phase == "correct":
            if self.phase_step >= o.correct_steps:
                new = "predict" if self._may_predict(step, confidence) else "full"
        if new != self.phase:
            self._leave(self.phase, new)
            self.phase, self.phase_step = new, 0
        return self.phase

    def _may_predict(self, step: int, confidence: float) -> bool:
        room = self.total_steps - step - self.options.correct_steps
        return confidence >= self.options.confidence_threshold and room >= 1

    def _leave(self, old: str, new: str) -> None:
        o = self.options
        if old == "predict":
            if self.aborted:
                self.budget = max(1, self.budget // 2)
        if new == "predict":
            self.aborted = False
            self.rolled_back = False

    def stepped(self) -> None:
        self.phase_step += 1

    def predict_steps_left(self, step: int) -> int:
        return max(0, min(self.budget - self.phase_step, self.total_steps - step - self.options.correct_steps))

    def check(self, loss: float, reference: float) -> None:
        """A forward-only loss check during Predict; ``reference`` is the lowest loss of the
        stretch so far (at first, the loss at Predict entry)."""
        if not math.isfinite(loss) or loss - reference > self.options.abort_tolerance * abs(reference):
            self.aborted = True

    def judged(self, loss: float, reference: float) -> bool:
        """At Correct entry: True when the predicted stretch must be rolled back."""
        worse = not math.isfinite(loss) or loss - reference > self.options.rollback_tolerance * abs(reference)
        if worse:
            self.rolled_back = True
            self.budget = max(1, self.budget // 2)
        elif not self.aborted:
            self.budget = min(self.options.max_predict_steps, max(self.budget + 1, math.ceil(self.budget * 1.5)))
        return worse


class Hybrid:
    """The schedule component: decides phases, runs predicted steps, rolls back."""

    def __init__(self, options: HybridOptions, ctx: Any):
        self.options = options
        self.ctx = ctx
        self.phases = [Phase(name, real=name != "predict") for name in PHASES]
        self._by_name = {p.name: p for p in self.phases}
        self.controller = HybridController(options, ctx.config.run.steps)
        self.real_steps = 0
        self.predicted_steps = 0
        self.rollbacks = 0
        self.aborts = 0
        self.returns = 0  # stretches cut back to their best checked point
        self.reference = float("nan")  # probe loss at Predict entry
        self.snapshot: list[torch.Tensor] | None = None
        self.best_loss = float("nan")  # lowest probe loss of the current stretch
        self.best: list[torch.Tensor] | None = None  # the weights that had it (None: the snapshot)
        self.end_loss: float | None = None  # probe loss after the last predicted step, if checked
        self._dynamics = None
        if ctx.config.section("dynamics") is None:
            from phasetrain.errors import BadInput

            raise BadInput('schedule "hybrid" needs a [dynamics] section, e.g. use = "linear"')

    @property
    def dynamics(self) -> Any:
        if self._dynamics is None:
            self._dynamics = self.ctx.component("dynamics")
        return self._dynamics

    def confidence(self) -> float:
        forced = self.options.force_confidence
        return forced if forced >= 0 else self.dynamics.confidence

    def steps_of(self, phase: Phase) -> int:
        return self.ctx.config.run.steps

    def phase_steps_left(self, trainer: Any) -> int | None:
        """Steps left in the current phase, this one included (None while it is open-ended):
        lets an offload strategy start restoring optimizer state during Predict's last step."""
        c = self.controller
        if c.phase == "predict":
            return max(1, c.predict_steps_left(trainer.state.step))
        if c.phase == "correct":
            return self.options.correct_steps - c.phase_step
        return None

    # -- deciding phases ---------------------------------------------------------------------

    def phase(self, trainer: Any) -> Phase:
        return self._by_name[self.controller.next_phase(trainer.state.step, self.confidence())]

    def probe_loss(self, trainer: Any) -> float:
        """Forward-only loss on a fixed batch (index -1, never used for training; see probe.py)."""
        return probe_loss(trainer, probe_batches(trainer, 1))

    @hookimpl
    def phase_enter(self, trainer: Any, phase: Phase, previous: Phase | None) -> None:
        if phase.name == "predict":
            if previous is None and self.snapshot is not None:
                return  # resumed inside a predicted stretch: its snapshot was restored
            self.snapshot = [p.detach().clone() for p in trainer.trainable]
            self.reference = self.best_loss = self.probe_loss(trainer)
            self.best = None
        elif phase.name == "correct" and previous is not None and previous.name == "predict":
            if self.controller.aborted:
                self.aborts += 1
            loss = self.probe_loss(trainer) if self.end_loss is None else self.end_loss
            if self.best is not None and not loss <= self.best_loss:  # overshot: back to the best check
                with torch.no_grad():
                    torch._foreach_copy_(trainer.trainable, self.best)
                self.returns += 1
                self._event(trainer, "return", f"hybrid: predicted stretch overshot (probe loss {loss:.4g}); "
                            f"back to its best check ({self.best_loss:.4g}, {self.reference:.4g} at entry)",
                            loss, self.best_loss)
                loss = self.best_loss
            if self.controller.judged(loss, self.reference):
                with torch.no_grad():
                    torch._foreach_copy_(trainer.trainable, self.snapshot)
                self.rollbacks += 1
                self.dynamics.penalize(self.options.rollback_penalty)
                self._event(trainer, "rollback", f"hybrid: rollback, probe loss {loss:.4g} against {self.reference:.4g} "
                            f"at Predict entry; weights restored", loss, self.reference)
            self.snapshot = self.best = None
            self.dynamics.rebase(trainer.trainable)

    def _event(self, trainer: Any, name: str, message: str, loss: float, kept: float) -> None:
        step = trainer.state.step
        fields = {"probe_loss": loss, "kept_loss": kept, "reference": self.reference,
                  "rollbacks": self.rollbacks, "returns": self.returns}
        trainer.pm.hook.event(trainer=trainer, step=step, name=name, message=f"{message} (step {step})",
                              fields=fields)

    # -- the predicted step ------------------------------------------------------------------

    @hookimpl
    def run_step(self, trainer: Any, step: int, phase: Phase) -> dict[str, Any] | None:
        if phase.name != "predict":
            return None
        optimizer = trainer.optimizer
        lr = optimizer.param_groups[0]["lr"]
        with torch.no_grad():
            delta = self.dynamics.predict(trainer.trainable, lr)
            torch._foreach_add_(trainer.trainable, delta)
        done = self.controller.phase_step + 1
        metrics: dict[str, Any] = {"loss": self.dynamics.predicted_loss(done), "lr": lr}
        self.end_loss = None
        if done % self.options.loss_check_every == 0:
            checked = self.probe_loss(trainer)
            metrics["loss"] = metrics["probe_loss"] = checked
            self.controller.check(checked, self.best_loss)
            c = self.controller
            ends = c.aborted or done >= c.budget
            self.end_loss = checked if ends else None  # Correct's entry need not measure again
            if checked < self.best_loss and not ends:  # the best point so far
                self.best_loss = checked
                self.best = [p.detach().clone() for p in trainer.trainable]
        return metrics

    @hookimpl(tryfirst=True)
    def post_step(self, trainer: Any, step: int, metrics: dict[str, Any]) -> None:
        self.controller.stepped()
        if not trainer.phase.real:
            self.predicted_steps += 1
        else:
            self.real_steps += 1
            loss = metrics["loss"]
            self.dynamics.observe(trainer.trainable, float(loss), metrics.get("lr", 0.0))
        metrics["phase"] = self.controller.phase
        metrics["predicted_fraction"] = self.predicted_steps / max(1, self.predicted_steps + self.real_steps)
        metrics["confidence"] = self.confidence()
        metrics["rollbacks"] = self.rollbacks
        metrics["returns"] = self.returns

    # -- state -------------------------------------------------------------------------------

    @hookimpl
    def checkpoint(self, state: dict[str, Any]) -> None:
        c = self.controller
        state["hybrid"] = {
            "phase": c.phase, "phase_step": c.phase_step, "budget": c.budget, "aborted": c.aborted,
            "rolled_back": c.rolled_back, "real_steps": self.real_steps,
            "predicted_steps": self.predicted_steps, "rollbacks": self.rollbacks, "aborts": self.aborts,
            "reference": self.reference, "snapshot": self.snapshot, "returns": self.returns,
            "best_loss": self.best_loss, "best": self.best, "end_loss": self.end_loss,
        }

    @hookimpl
    def restore(self, state: dict[str, Any]) -> None:
        s = state.get("hybrid")
        if not s:
            return
        c = self.controller
        c.phase, c.phase_step, c.budget = s["phase"], s["phase_step"], s["budget"]
        c.aborted, c.rolled_back = s["aborted"], s["rolled_back"]
        self.real_steps, self.predicted_steps = s["real_steps"], s["predicted_steps"]
        self.rollbacks, self.aborts = s["rollbacks"], s["aborts"]
        self.reference, self.snapshot = s["reference"], s["snapshot"]
        self.returns, self.best_loss, self.best = s["returns"], s["best_loss"], s["best"]
        self.end_loss = s["end_loss"]


@hookimpl
def phasetrain_kinds() -> list[Kind]:
    from phasetrain.plugins.hybrid.dynamics import Dynamics

    return [Kind("dynamics", "predicted weight updates for the hybrid schedule (single steps) and nowcast (jumps)",
                 Dynamics, contracts="phasetrain.plugins.hybrid.contracts")]


@hookimpl
def phasetrain_components() -> list[Component]:
    from phasetrain.plugins.hybrid import dynamics, nowcast, nowcaster, snapshots

    return [
        Component("schedule", "hybrid", Hybrid, HybridOptions,
                  "warmup -> full -> predict -> correct, predicted steps without backward"),
        Component("schedule", "nowcast", nowcast.Nowcast, nowcast.NowcastOptions,
                  "stages with occasional jumps ahead, each judged after settling and rolled back if it lost"),
        Component("dynamics", "linear", dynamics.LinearDynamics, dynamics.LinearOptions,
                  "extrapolates an EMA of real updates with a fitted scale"),
        Component("dynamics", "linefit", snapshots.LineFit, snapshots.LineFitOptions,
                  "per-parameter least-squares line through snapshots (nowcasts)"),
        Component("dynamics", "nowcaster", nowcaster.LearnedNowcaster, nowcaster.NowcasterOptions,
                  "per-parameter network learned across runs, shipped weights (nowcasts)"),
    ]
