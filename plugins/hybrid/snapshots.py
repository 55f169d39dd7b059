"""Dynamics models that nowcast from snapshots, and ``linefit``, the one with no training.

A *nowcaster* (the :class:`~phasetrain.plugins.hybrid.dynamics.Nowcaster` protocol) looks at
``snapshots`` copies of the trainable tensors taken the same number of real steps apart (oldest
first, the last one being the current weights) and says where the weights will be ``ahead``
spacings later, as a displacement from the last snapshot. It is a pure function of the history:
the ``nowcast`` schedule owns the snapshots and decides when to jump.

``linefit`` fits a straight line through the history of every scalar by least squares and reads
it ``ahead`` spacings past the last snapshot. The fitted line also averages out the oscillation
around the trend, so the jump both extrapolates and denoises (at ``ahead = 0`` it is a weight
average along the trajectory).

:class:`SnapshotDynamics` gives every nowcaster the per-step protocol of the ``hybrid``
schedule too: it keeps its own snapshots every ``every`` observed real steps, predicts one
spacing ahead spread evenly over its steps, and scores each committed prediction against the
next real snapshot (cosine, smoothed) for its ``confidence``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs
import torch

from phasetrain.config import at_least, positive, probability

from .dynamics import SavedAsDynamics

Tensors = list[torch.Tensor]


def relative_to_last(history: Sequence[Sequence[torch.Tensor]]) -> list[Tensors]:
    """``w_i - w_last`` for every snapshot but the last: nearby weights subtract exactly, so the
    combinations that follow keep the displacement's precision in float32."""
    last = list(history[-1])
    return [torch._foreach_sub(list(h), last) for h in history[:-1]]


def line_coefficients(k: int, ahead: float) -> list[float]:
    """``c`` with ``line(k - 1 + ahead) = sum_i c_i w_i`` for the least-squares line through
    ``w_0 .. w_(k-1)`` at times ``0 .. k-1``; the coefficients sum to 1."""
    mean = (k - 1) / 2
    spread = sum((i - mean) ** 2 for i in range(k))
    at = k - 1 + ahead
    return [1 / k + (at - mean) * (i - mean) / spread for i in range(k)]


@attrs.define
class SnapshotOptions:
    # real steps between the snapshots kept for the hybrid schedule's single-step predictions
    every: int = attrs.field(default=10, validator=positive)
    confidence_smoothing: float = attrs.field(default=0.5, validator=probability)  # EMA of scores


@attrs.define
class LineFitOptions(SnapshotOptions):
    snapshots: int = attrs.field(default=5, validator=at_least(2))  # points the line is fitted to


class SnapshotDynamics(SavedAsDynamics):
    """The hybrid schedule's per-step protocol on top of ``nowcast`` (see the module docstring).
    Subclasses set ``snapshots`` and implement ``nowcast(history, ahead)``."""

    snapshots: int

    def __init__(self, options: SnapshotOptions, ctx: Any):
        self.options = options
        self.history: list[Tensors] = []
        self.observed = 0
        self.loss = float("nan")
        self.loss_slope = 0.0
        self.score = 0.0
        self.scored = 0
        self.committed: Tensors | None = None  # nowcast of the next snapshot, to be scored
        self._step: Tensors | None = None  # cached single-step prediction

    def nowcast(self, history: Sequence[Sequence[torch.Tensor]], ahead: float) -> Tensors:
        raise NotImplementedError

    def observe(self, params: list[torch.Tensor], loss: float, lr: float) -> None:
        if math.isfinite(loss) and math.isfinite(self.loss):
            self.loss_slope = 0.9 * self.loss_slope + 0.1 * (loss - self.loss)
        self.loss = loss
        self.observed += 1
        if self.observed % self.options.every:
            return
        snap = [p.detach().clone() for p in params]
        if self.committed is not None:
            self._score(torch._foreach_sub(snap, self.history[-1]))
        self.history = [*self.history, snap][-self.snapshots:]
        full = len(self.history) == self.snapshots
        self.committed = self.nowcast(self.history, 1.0) if full else None
        self._step = None

    def _score(self, actual: Tensors) -> None:
        pred = self.committed
        dot = sum(float((a.double() * p.double()).sum()) for a, p in zip(actual, pred, strict=True))
        norms = math.sqrt(sum(float(a.double().square().sum()) for a in actual)
                          * sum(float(p.double().square().sum()) for p in pred))
        if norms > 0:
            score = min(1.0, max(0.0, dot / norms))
            s = self.options.confidence_smoothing
            self.score = score if self.scored == 0 else s * self.score + (1 - s) * score
            self.scored += 1

    def rebase(self, params: list[torch.Tensor]) -> None:
        """The weights moved by other means: the history moves with them, so the fitted
        trajectory continues from where they are now."""
        if self.history:
            shift = torch._foreach_sub([p.detach() for p in params], self.history[-1])
            self.history = [torch._foreach_add(h, shift) for h in self.history]
        self.committed = None
        self._step = None

    def predict(self, params: list[torch.Tensor], lr: float) -> Tensors:
        if len(self.history) < self.snapshots:
            return [torch.zeros_like(p) for p in params]
        if self._step is None:
            self._step = torch._foreach_div(self.nowcast(self.history, 1.0), float(self.options.every))
        return [d.clone() for d in self._step]

    def predicted_loss(self, k: int) -> float:
        return self.loss + k * self.loss_slope

    @property
    def confidence(self) -> float:
        return self.score if self.scored else 0.0

    def penalize(self, factor: float) -> None:
        self.score *= factor

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "observed": self.observed, "loss": self.loss,
                "loss_slope": self.loss_slope, "score": self.score, "scored": self.scored,
                "committed": self.committed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [list(h) for h in state["history"]]
        self.observed, self.loss, self.loss_slope = state["observed"], state["loss"], state["loss_slope"]
        self.score, self.scored = state["score"], state["scored"]
        self.committed = None if state["committed"] is None else list(state["committed"])
        self._step = None


class LineFit(SnapshotDynamics):
    """Per-scalar least-squares line through the snapshots, read ``ahead`` spacings on."""

    kind = "linefit"

    def __init__(self, options: LineFitOptions, ctx: Any):
        super().__init__(options, ctx)
        self.snapshots = options.snapshots

    def nowcast(self, history: Sequence[Sequence[torch.Tensor]], ahead: float) -> Tensors:
        with torch.no_grad():
            coef = line_coefficients(len(history), ahead)
            # sum_i c_i w_i - w_last = sum_(i < last) c_i (w_i - w_last), as the c_i sum to 1
            rel = relative_to_last(history)
            out = torch._foreach_mul(rel[0], coef[0])
            for c, r in zip(coef[1:-1], rel[1:], strict=True):
                torch._foreach_add_(out, r, alpha=c)
            return out
