"""Causal training weights for time-dependent PINNs (Wang, Sankaran & Perdikaris, 2022,
"Respecting causality is all you need for training physics-informed neural networks").

The time interval is cut into ``M`` bins; ``L_i`` is the mean squared PDE residual of the
collocation points in bin ``i``. The PDE term of the loss becomes

    L_pde = (1 / M) sum_i w_i L_i,    w_i = exp(-epsilon * sum_{k < i} L_k)

with the weights held constant (no gradient through them), so a later time only counts once the
residual before it is small: the network cannot fit late times to a wrong early solution.

Here the weights of a step come from the bin losses of the step before (its last loss
evaluation), so one step's objective is fixed however many times L-BFGS evaluates it, and a
micro-batch needs no statistics of the others: each point's factor ``w_i / (M N_i)`` is known
before the step, and the accumulated gradient is still the full-batch gradient. The first step
(and the first after a resume without saved losses) measures the bin losses in a pass of its own.
Weights below ``NEGLIGIBLE`` are taken as 0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

#: Weights below this are 0 (measured on Allen-Cahn: a run with weights near 1e-13 took 3x the
#: time per step, its backward spent in subnormal float32 numbers).
NEGLIGIBLE = 1e-8


class CausalWeights:
    """Per-point factors of the PDE term from the previous step's per-bin residuals."""

    def __init__(self, epsilon: float, bins: int, t0: float, t1: float, time_dim: int) -> None:
        self.epsilon, self.bins, self.t0, self.t1, self.time_dim = float(epsilon), int(bins), t0, t1, time_dim
        self.losses: Tensor | None = None  # (M,) float64: mean squared residual per bin, last evaluation
        self.weights = torch.ones(self.bins, dtype=torch.float64)
        self._sums = torch.zeros(self.bins, dtype=torch.float64)

    def assign(self, points: Tensor) -> None:
        """Bin the collocation points (M, d) by time (whenever they change)."""
        t = points[:, self.time_dim].detach().to("cpu", torch.float64)
        unit = (t - self.t0) / (self.t1 - self.t0)
        self.bin = (unit * self.bins).long().clamp(0, self.bins - 1)  # (N,)
        self.count = torch.bincount(self.bin, minlength=self.bins).to(torch.float64)  # (M,)
        self.factor_device: Tensor | None = None

    def update(self) -> None:
        """Weights for the coming step from the last recorded bin losses."""
        if self.losses is None:
            return
        earlier = torch.cat([torch.zeros(1, dtype=torch.float64), self.losses.cumsum(0)[:-1]])
        weights = torch.exp(-self.epsilon * earlier)
        # A weight this small changes nothing, but its products in the double backward of the
        # residual fall below float32's normal range, where CPU arithmetic is many times slower.
        self.weights = torch.where(weights < NEGLIGIBLE, 0.0, weights)
        self.factor_device = None

    def factors(self, like: Tensor) -> Tensor:
        """(N,) factor per point, ``w_bin / (M N_bin)``, on ``like``'s device and dtype; summed
        with the squared residuals it is L_pde."""
        if self.factor_device is None or self.factor_device.dtype != like.dtype:
            per_bin = self.weights / (self.bins * self.count.clamp_min(1.0))
            self.factor_device = per_bin[self.bin].to(device=like.device, dtype=like.dtype)
        return self.factor_device

    def record(self, squares: Tensor, part: slice | Tensor, first: bool) -> None:
        """Add the squared residuals (m,) of the points ``part`` of the set to this evaluation's
        bin sums; the first micro-batch of an evaluation starts them again."""
        if first:
            self._sums = torch.zeros(self.bins, dtype=torch.float64)
        self._sums.index_add_(0, self.bin[part], squares.detach().to("cpu", torch.float64))

    def finish(self) -> None:
        """The sums recorded so far are a whole evaluation: they are the bin losses."""
        self.losses = self._sums / self.count.clamp_min(1.0)

    def state_dict(self) -> dict[str, Any]:
        return {"losses": None if self.losses is None else self.losses.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        losses = state.get("losses")
        self.losses = None if losses is None else torch.as_tensor(losses, dtype=torch.float64).clone()
