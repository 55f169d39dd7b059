"""Non-finite losses and gradients: the ``[nonfinite]`` kind, declared here.

Every component but ``off`` checks, in ``after_backward`` (``tryfirst``), that the step's loss
and gradients are finite, with the fused check torch's GradScaler uses (one kernel per device
and dtype, scale 1, values left bit for bit as they were); gradients are left to a precision
policy that ``handles_overflow`` (fp16 loss scaling). A bad step is skipped
(``trainer.request_skip_step()``: the optimizer never applies it) and reported as
``nonfinite = 1`` in the step's metrics. The component decides what follows:

- ``skip`` (the default): go on; after ``patience`` consecutive bad steps, warn once per streak.
- ``rollback``: after ``patience`` consecutive bad steps, ask the loop to continue from the last
  good checkpoint with every learning rate multiplied by ``lr_factor``; rolling back to the same
  checkpoint more than ``max_rollbacks`` times stops the run.
- ``stop``: after ``patience`` consecutive bad steps, stop with exit code 1, keeping the last good
  checkpoint.
- ``off``: no check at all (a non-finite update is applied): saves the check's cost on tiny steps.

Whatever the component, a run whose last step's loss is not finite fails (exit code 1) instead of
reporting "completed": it diverged, and its last good checkpoint is kept rather than overwritten.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import attrs
import torch

from phasetrain import Component, NoOptions, hookimpl
from phasetrain.config import in_range, positive
from phasetrain.errors import TrainingFailed
from phasetrain.plugins.distributed import is_dtensor
from phasetrain.registry import Kind


@attrs.define
class SkipOptions:
    patience: int = attrs.field(default=3, validator=positive)  # consecutive bad steps before a warning


@attrs.define
class StopOptions:
    patience: int = attrs.field(default=3, validator=positive)  # consecutive bad steps before stopping


@attrs.define
class RollbackOptions:
    patience: int = attrs.field(default=3, validator=positive)  # consecutive bad steps before a rollback
    lr_factor: float = attrs.field(default=0.5, validator=in_range(1e-6, 1.0))  # learning rates x this
    max_rollbacks: int = attrs.field(default=3, validator=positive)  # to the same checkpoint, then stop


_FLAGS: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def finite(loss: torch.Tensor, params: list[torch.Tensor], check_grads: bool) -> bool:
    """True when ``loss`` (and, if asked, every gradient) is finite: one fused kernel for tensors
    of one device and dtype, group by group otherwise. Sharded gradients (DTensors, under
    ``fsdp``) are checked apart from plain tensors: torch then agrees on their verdict across
    the processes that hold the shards."""
    grads = [p.grad for p in params if p.grad is not None] if check_grads else []
    sharded = [g for g in grads if is_dtensor(g)]
    plain = [loss, *(g for g in grads if not is_dtensor(g))]
    return all(_checked(group) for group in (sharded, plain) if group)


def _checked(tensors: list[torch.Tensor]) -> bool:
    try:
        return _fused(tensors, tensors[0].device)
    except RuntimeError:  # mixed devices or dtypes
        groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        for t in tensors:
            groups.setdefault((t.device, t.dtype), []).append(t)
        return all(_fused(group, device) for (device, _), group in groups.items())


def _fused(tensors: list[torch.Tensor], device: torch.device) -> bool:
    if device not in _FLAGS:  # 0-dim flags: DTensor takes them for replicated scalars without a warning
        _FLAGS[device] = (torch.zeros((), device=device), torch.ones((), device=device))
    found, one = _FLAGS[device]
    found.zero_()
    torch._amp_foreach_non_finite_check_and_unscale_(tensors, found, one)
    return not found.item()


class Off:
    """No check: whatever the step computes is applied."""

    def __init__(self, options: Any, ctx: Any):
        pass


class Skip:
    """Checks every step and skips the bad ones; subclasses decide what a streak of them means."""

    def __init__(self, options: Any, ctx: Any):
        self.options = options
        self.streak = 0
        self.total = 0
        self.bad = False

    @hookimpl(tryfirst=True)  # before anything else looks at the gradients
    def after_backward(self, trainer: Any, loss: torch.Tensor) -> None:
        if not finite(loss, trainer.trainable, not trainer.precision.handles_overflow):
            self.bad = True
            trainer.request_skip_step()

    @hookimpl(tryfirst=True)
    def post_step(self, trainer: Any, step: int, metrics: Any) -> None:
        if not self.bad:
            self.streak = 0
            return
        self.bad = False
        metrics["nonfinite"] = 1
        self.streak += 1
        self.total += 1
        if self.streak >= self.options.patience:
            self.act(trainer, step)

    def act(self, trainer: Any, step: int) -> None:
        if self.streak == self.options.patience:
            print(f"phasetrain: warning: {self.streak} consecutive non-finite steps skipped "
                  f"(at step {step + 1})", file=sys.stderr)


class Stop(Skip):
    def act(self, trainer: Any, step: int) -> None:
        raise TrainingFailed(
            f"the loss or gradients were not finite for {self.streak} consecutive steps "
            f"(up to step {step + 1}); the last good checkpoint is kept in {trainer.out_dir}"
        )


class Rollback(Skip):
    def __init__(self, options: RollbackOptions, ctx: Any):
        super().__init__(options, ctx)
        self.rollbacks = 0
        self._to_same: tuple[Any, int] = (None, 0)  # (checkpoint step, rollbacks to it)
        self._cut = False  # a requested rollback whose learning rates are still to be cut

    def act(self, trainer: Any, step: int) -> None:
        try:
            path, state, _meta = trainer.store.latest(trainer.out_dir)
        except Exception as exc:
            raise TrainingFailed(f"non-finite steps and no checkpoint to roll back to: {exc}") from None
        target, count = self._to_same
        count = count + 1 if target == state["trainer"]["step"] else 1
        if count > self.options.max_rollbacks:
            raise TrainingFailed(f"still non-finite after {self.options.max_rollbacks} rollbacks to {path.name} "
                                 "with lower learning rates; the last good checkpoint is kept")
        self._to_same = (state["trainer"]["step"], count)
        self.rollbacks += 1
        self.streak = 0
        self._cut = True
        trainer.request_rollback(state)
        print(f"phasetrain: rolling back to {path.name} after non-finite steps; learning rates "
              f"x{self.options.lr_factor}", file=sys.stderr)

    @hookimpl
    def restore(self, trainer: Any) -> None:
        if not self._cut:  # a resume, not our rollback
            return
        self._cut = False
        factor = self.options.lr_factor
        for key, optimizer in trainer.optimizers.items():
            for group in optimizer.param_groups:
                group["lr"] *= factor
            scheduler = trainer.lr_schedulers.get(key)
            if scheduler is not None and hasattr(scheduler, "base_lrs"):
                scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]


@hookimpl(trylast=True)
def post_step(trainer: Any, step: int, metrics: Any) -> None:
    """A run whose last step's loss is not finite diverged: it must not end "completed"."""
    loss = metrics.get("loss") if isinstance(metrics, dict) else None
    if step + 1 != trainer.config.run.steps or loss is None:
        return
    value = float(loss.detach().float()) if isinstance(loss, torch.Tensor) and loss.numel() == 1 else loss
    if isinstance(value, float) and not math.isfinite(value):
        raise TrainingFailed(f"the loss of the last step ({step + 1}) is {value}: the run diverged (lower the "
                             "learning rate, or see [nonfinite]); its final weights are not saved")


@hookimpl
def phasetrain_kinds() -> list[Kind]:
    return [Kind("nonfinite", "what happens after steps whose loss or gradients are not finite",
                 contracts="phasetrain.plugins.generic_contracts")]


@hookimpl
def phasetrain_components() -> list[Component]:
    return [
        Component("nonfinite", "skip", Skip, SkipOptions, "skip the step; warn after a streak", default=True),
        Component("nonfinite", "rollback", Rollback, RollbackOptions,
                  "back to the last good checkpoint with lower learning rates"),
        Component("nonfinite", "stop", Stop, StopOptions, "stop with exit code 1, keeping the last good checkpoint"),
        Component("nonfinite", "off", Off, NoOptions, "no check: a non-finite update is applied"),
    ]
