"""Dynamics models for predicted steps: the protocol and the ``linear`` model.

A dynamics model watches real steps and, when asked, predicts the next weight update without a
backward pass. The hybrid schedule drives it:

- ``observe(params, loss, lr)`` after every real step (``params`` are the trainable tensors,
  already updated);
- ``rebase(params)`` after weights moved by anything but a real step (predicted steps, a
  rollback), so the next observed update is measured from there;
- ``predict(params, lr) -> list[Tensor]`` the update for one predicted step, shaped like
  ``params``, finite;
- ``predicted_loss(k) -> float`` the loss expected ``k`` predicted steps from now;
- ``confidence -> float`` in [0, 1], how well its predictions matched real steps it had not seen;
- ``penalize(factor)`` after a predicted stretch was rolled back;
- ``state_dict()`` / ``load_state_dict()`` everything needed to continue identically.

The ``nowcast`` schedule asks more of a model: that it also be a :class:`Nowcaster`, which
predicts many steps ahead from a few snapshots (``snapshots.py``: ``linefit``; ``nowcaster.py``:
the learned ``nowcaster``). Those two also serve the hybrid schedule, through
:class:`~phasetrain.plugins.hybrid.snapshots.SnapshotDynamics`.

``linear`` extrapolates an exponential moving average (EMA) of real updates, scaled by a factor
fitted online and by the ratio of the current learning rate to the one the EMA saw. Its
confidence comes from windows of real steps: at the start of a window it commits to a prediction
of the cumulative change over the window; at the end it compares with what really happened
(the cosine between the two, smoothed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import attrs
import torch

from phasetrain import hookimpl
from phasetrain.config import at_least, in_range, positive, probability


@runtime_checkable
class Dynamics(Protocol):
    """What the hybrid schedule asks of a ``[dynamics]`` component (see the module docstring).
    Its state goes into checkpoints through the ``checkpoint`` and ``restore`` hooks; the
    conformance kit also checks ``state_dict()``/``load_state_dict()`` when it has them."""

    confidence: float

    def observe(self, params: list[torch.Tensor], loss: float, lr: float) -> None: ...

    def rebase(self, params: list[torch.Tensor]) -> None: ...

    def predict(self, params: list[torch.Tensor], lr: float) -> list[torch.Tensor]: ...

    def predicted_loss(self, k: int) -> float: ...

    def penalize(self, factor: float) -> None: ...


@runtime_checkable
class Nowcaster(Protocol):
    """A dynamics model that predicts far ahead from snapshots: what the ``nowcast`` schedule
    asks of its ``[dynamics]`` (``linefit``, ``nowcaster``; see ``snapshots.py``).

    ``snapshots`` is how many it reads. ``nowcast(history, ahead)`` gets that many lists of the
    trainable tensors, taken the same number of real steps apart, oldest first, the last being
    the current weights; it returns where the weights will be ``ahead`` spacings after the last
    snapshot, as a displacement from it (one finite tensor per parameter, like it). It changes
    no state: the same history gives the same answer.
    """

    snapshots: int

    def nowcast(self, history: Sequence[Sequence[torch.Tensor]], ahead: float) -> list[torch.Tensor]: ...


def _flat_dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum((x.double() * y.double()).sum() for x, y in zip(a, b, strict=True))


@attrs.define
class LinearOptions:
    beta: float = attrs.field(default=0.9, validator=in_range(0.0, 0.999))  # EMA of real updates
    window: int = attrs.field(default=5, validator=at_least(2))  # real steps per confidence test (fits in Correct)
    confidence_smoothing: float = attrs.field(default=0.5, validator=probability)  # EMA of scores
    max_scale: float = attrs.field(default=2.0, validator=positive)  # cap of the fitted step scale


class SavedAsDynamics:
    """A dynamics model's state in checkpoints, under the ``dynamics`` key, through the hooks
    (``state_dict`` / ``load_state_dict`` are the model's own)."""

    @hookimpl
    def checkpoint(self, state: dict[str, Any]) -> None:
        state["dynamics"] = self.state_dict()

    @hookimpl
    def restore(self, state: dict[str, Any]) -> None:
        if "dynamics" in state:
            self.load_state_dict(state["dynamics"])


class LinearDynamics(SavedAsDynamics):
    """Extrapolates the smoothed real update (see the module docstring)."""

    kind = "linear"

    def __init__(self, options: LinearOptions, ctx: Any):
        self.options = options
        self.ema: list[torch.Tensor] | None = None
        self.prev: list[torch.Tensor] | None = None
        self.observed = 0
        self.scale = 1.0
        self.ema_lr = 0.0
        self.loss = float("nan")
        self.loss_slope = 0.0
        self.score = 0.0
        self.scored_windows = 0
        self._anchor: list[torch.Tensor] | None = None
        self._window_pred: list[torch.Tensor] | None = None
        self._window_steps = 0

    # -- observing real steps ---------------------------------------------------------------

    def rebase(self, params: list[torch.Tensor]) -> None:
        self.prev = [p.detach().clone() for p in params]
        self._anchor = None
        self._window_pred = None
        self._window_steps = 0

    def observe(self, params: list[torch.Tensor], loss: float, lr: float) -> None:
        o = self.options
        with torch.no_grad():
            if self.prev is None:
                self.rebase(params)
                self.loss = loss
                return
            delta = torch._foreach_sub([p.detach() for p in params], self.prev)
            if self.ema is None:
                self.ema = [d.clone() for d in delta]
                self.ema_lr = lr
            else:
                torch._foreach_mul_(self.ema, o.beta)
                torch._foreach_add_(self.ema, delta, alpha=1 - o.beta)
                self.ema_lr = o.beta * self.ema_lr + (1 - o.beta) * lr
            torch._foreach_copy_(self.prev, [p.detach() for p in params])
        if loss == loss and self.loss == self.loss:  # both not NaN
            self.loss_slope = o.beta * self.loss_slope + (1 - o.beta) * (loss - self.loss)
        self.loss = loss
        self.observed += 1
        self._score_window(params, lr)

    def _score_window(self, params: list[torch.Tensor], lr: float) -> None:
        o = self.options
        if self._anchor is None:
            if self.observed >= o.window:  # commit to a prediction for the next window
                self._anchor = [p.detach().clone() for p in params]
                self._window_pred = [d * (o.window * self.scale * self._lr_ratio(lr)) for d in self.ema]
                self._window_steps = 0
            return
        self._window_steps += 1
        if self._window_steps < o.window:
            return
        with torch.no_grad():
            actual = torch._foreach_sub([p.detach() for p in params], self._anchor)
            pred = self._window_pred
            pp = float(_flat_dot(pred, pred))
            aa = float(_flat_dot(actual, actual))
            ap = float(_flat_dot(actual, pred))
        if aa > 0 and pp > 0:
            # Alignment of the committed prediction with what happened (cosine), and the scale
            # that would have fitted best. The cosine discounts the part of real updates that is
            # minibatch noise, which no model can predict and which does not lower the loss.
            score = min(1.0, max(0.0, ap / (aa * pp) ** 0.5))
            s = o.confidence_smoothing
            self.score = score if self.scored_windows == 0 else s * self.score + (1 - s) * score
            self.scored_windows += 1
            fitted = self.scale * ap / pp
            self.scale = min(o.max_scale, max(0.0, 0.5 * self.scale + 0.5 * fitted))
        self._anchor = None

    # -- predicting ---------------------------------------------------------------------------

    def _lr_ratio(self, lr: float) -> float:
        return lr / self.ema_lr if self.ema_lr > 0 else 1.0

    @property
    def confidence(self) -> float:
        return self.score if self.scored_windows else 0.0

    def predict(self, params: list[torch.Tensor], lr: float) -> list[torch.Tensor]:
        if self.ema is None:
            return [torch.zeros_like(p) for p in params]
        return torch._foreach_mul(self.ema, self.scale * self._lr_ratio(lr))

    def predicted_loss(self, k: int) -> float:
        return self.loss + k * self.loss_slope * self.scale

    def penalize(self, factor: float) -> None:
        self.score *= factor

    # -- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "ema": self.ema, "prev": self.prev, "observed": self.observed, "scale": self.scale,
            "ema_lr": self.ema_lr, "loss": self.loss, "loss_slope": self.loss_slope,
            "score": self.score, "scored_windows": self.scored_windows, "anchor": self._anchor,
            "window_pred": self._window_pred, "window_steps": self._window_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema, self.prev, self.observed = state["ema"], state["prev"], state["observed"]
        self.scale, self.ema_lr, self.loss = state["scale"], state["ema_lr"], state["loss"]
        self.loss_slope, self.score = state["loss_slope"], state["score"]
        self.scored_windows, self._anchor = state["scored_windows"], state["anchor"]
        self._window_pred, self._window_steps = state["window_pred"], state["window_steps"]

