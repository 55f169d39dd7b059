"""What happens after a non-finite step (the step itself never applies one; see ``step.py``).

``run.nonfinite`` chooses the policy:

- ``"skip"``: skip the step and go on; after ``run.nonfinite_patience`` consecutive bad steps,
  warn once per streak.
- ``"rollback"``: skip; after ``run.nonfinite_patience`` consecutive bad steps, restore the last
  good checkpoint, multiply every learning rate by ``run.nonfinite_lr_factor`` and continue.
  Rolling back to the same checkpoint more than ``MAX_ROLLBACKS`` times stops the run.
- ``"stop"``: skip; after ``run.nonfinite_patience`` consecutive bad steps stop with exit code 1,
  keeping the last good checkpoint.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from phasetrain.errors import TrainingFailed
from phasetrain.hookspecs import hookimpl

if TYPE_CHECKING:
    from phasetrain.loop import Trainer


MAX_ROLLBACKS = 3


class NonFiniteGuard:
    def __init__(self) -> None:
        self.streak = 0
        self.total = 0
        self.rollbacks = 0
        self._to_same = (None, 0)  # (checkpoint step, rollbacks to it)

    @hookimpl(tryfirst=True)
    def post_step(self, trainer: Trainer, step: int, metrics: dict[str, Any]) -> None:
        if not metrics.get("nonfinite"):
            self.streak = 0
            return
        self.streak += 1
        self.total += 1
        run = trainer.config.run
        if self.streak < run.nonfinite_patience:
            return
        if run.nonfinite == "stop":
            raise TrainingFailed(
                f"the loss or gradients were not finite for {self.streak} consecutive steps "
                f"(up to step {step + 1}); the last good checkpoint is kept in {trainer.out_dir}"
            )
        if run.nonfinite == "rollback":
            self.rollback(trainer)
        elif self.streak == run.nonfinite_patience:
            print(f"phasetrain: warning: {self.streak} consecutive non-finite steps skipped "
                  f"(at step {step + 1})", file=sys.stderr)

    def rollback(self, trainer: Trainer) -> None:
        from phasetrain import checkpoint

        factor = trainer.config.run.nonfinite_lr_factor
        try:
            path, state, _meta = checkpoint.latest_good(trainer.out_dir)
        except Exception as exc:
            raise TrainingFailed(f"non-finite steps and no checkpoint to roll back to: {exc}") from None
        target, count = self._to_same
        count = count + 1 if target == state["trainer"]["step"] else 1
        if count > MAX_ROLLBACKS:
            raise TrainingFailed(
                f"still non-finite after {MAX_ROLLBACKS} rollbacks to {path.name} with lower learning "
                "rates; the last good checkpoint is kept"
            )
        self._to_same = (state["trainer"]["step"], count)
        checkpoint.apply(trainer, state)
        trainer.rebuild_optimizers()
        self.rollbacks += 1
        self.streak = 0
        for key, optimizer in trainer.optimizers.items():
            for group in optimizer.param_groups:
                group["lr"] *= factor
            scheduler = trainer.lr_schedulers.get(key)
            if scheduler is not None and hasattr(scheduler, "base_lrs"):
                scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
        print(f"phasetrain: rolled back to {path.name} after non-finite steps; learning rates x{factor}",
              file=sys.stderr)
