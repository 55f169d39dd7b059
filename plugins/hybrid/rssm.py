"""The ``rssm`` dynamics model: a small learned recurrent state-space model of training.

Each real step is compressed into a feature vector: the change of the loss and the log-norm of
the update of every parameter tensor (normalised online). A GRU over these features, with a
linear read-out, is trained online (a few Adam steps on the recent window every
``train_every`` real steps) to predict the next vector. In Predict it is rolled out: the
per-tensor update *directions* come from the EMA of real updates (as in ``linear``), the
per-tensor update *sizes* and the loss trajectory from the rollout.

Before it is trusted it must beat the ``linear`` baseline on held-out real steps: each new
feature vector is first predicted (one step ahead, before the GRU trains on it), and the error
is compared with the baseline's (update norms persist, the loss follows its smoothed slope).
Its confidence is 0 until its smoothed error is lower; then it is the directional score of the
shared EMA (see ``dynamics.py``).

The GRU and its optimizer use their own generator and run on the CPU, so observing a run never
changes its random streams or its device memory.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch
from torch import nn

from phasetrain.config import at_least, positive
from phasetrain.plugins.hybrid.dynamics import LinearDynamics, LinearOptions


@attrs.define
class RSSMOptions(LinearOptions):
    hidden: int = attrs.field(default=32, validator=positive)  # GRU state size
    history: int = attrs.field(default=48, validator=at_least(4))  # real steps kept for training
    train_every: int = attrs.field(default=4, validator=positive)  # real steps between updates
    train_iters: int = attrs.field(default=4, validator=positive)  # Adam steps per update
    lr: float = attrs.field(default=3e-3, validator=positive)
    min_scored: int = attrs.field(default=16, validator=positive)  # held-out steps before trust
    max_groups: int = attrs.field(default=16, validator=positive)  # parameter tensors are pooled


class _Net(nn.Module):
    def __init__(self, features: int, hidden: int):
        super().__init__()
        self.gru = nn.GRU(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, features)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        out, h = self.gru(x, h)  # x: (1, T, F)
        return self.head(out), h  # (1, T, F), (1, 1, H)


class RSSMDynamics(LinearDynamics):
    kind = "rssm"

    def __init__(self, options: RSSMOptions, ctx: Any):
        super().__init__(options, ctx)
        params = [p for p in ctx.component("task").model.parameters() if p.requires_grad]
        n = len(params)
        groups = min(n, options.max_groups)
        # tensor i belongs to group i * groups // n: neighbouring tensors (a layer) pool together
        self.group_of = torch.tensor([i * groups // n for i in range(n)])
        self.features = 1 + groups
        g = torch.Generator().manual_seed(ctx.seed + 2024)
        self.net = _Net(self.features, options.hidden)
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) / math.sqrt(options.hidden))
        self.opt = torch.optim.Adam(self.net.parameters(), lr=options.lr)
        self.buffer: list[torch.Tensor] = []
        self.mean = torch.zeros(self.features)
        self.var = torch.ones(self.features)
        self.stat_count = 0
        self.h: torch.Tensor | None = None  # GRU state after the last real step
        self.next_pred: torch.Tensor | None = None  # its one-step prediction of the next vector
        self.err_rssm = 0.0
        self.err_base = 0.0
        self.scored = 0
        self.real_seen = 0
        self._rollout: tuple[torch.Tensor, torch.Tensor] | None = None
        self._prev_loss = float("nan")

    # -- features ----------------------------------------------------------------------------

    def _raw_features(self, delta: list[torch.Tensor], loss: float) -> torch.Tensor:
        norms = torch.stack(torch._foreach_norm(delta)).double().cpu()
        sq = torch.zeros(self.features - 1, dtype=torch.float64).index_add_(0, self.group_of, norms**2)
        dloss = 0.0 if math.isnan(self._prev_loss) else loss - self._prev_loss
        return torch.cat([torch.tensor([dloss], dtype=torch.float64), 0.5 * torch.log(sq + 1e-30)]).float()

    def _normalise(self, raw: torch.Tensor) -> torch.Tensor:
        self.stat_count += 1
        k = 1.0 / min(self.stat_count, 100)
        diff = raw - self.mean
        self.mean = self.mean + k * diff
        self.var = (1 - k) * self.var + k * diff * (raw - self.mean)
        return (raw - self.mean) / (self.var.sqrt() + 1e-6)

    def _denormalise(self, z: torch.Tensor) -> torch.Tensor:
        return z * (self.var.sqrt() + 1e-6) + self.mean

    # -- observing ---------------------------------------------------------------------------

    def observe(self, params: list[torch.Tensor], loss: float, lr: float) -> None:
        prev = None if self.prev is None else [p.clone() for p in self.prev]
        super().observe(params, loss, lr)
        self._rollout = None
        if prev is None:
            self._prev_loss = loss
            return
        with torch.no_grad():
            delta = torch._foreach_sub([p.detach() for p in params], prev)
            z = self._normalise(self._raw_features(delta, loss))
        self._prev_loss = loss
        self.real_seen += 1
        if self.next_pred is not None and self.buffer:  # held-out score before training on z
            base = self.buffer[-1].clone()  # persistence of update norms...
            base[0] = 0.0  # ...and a loss change at its running mean
            a = 0.9
            self.err_rssm = a * self.err_rssm + (1 - a) * float(((self.next_pred - z) ** 2).mean())
            self.err_base = a * self.err_base + (1 - a) * float(((base - z) ** 2).mean())
            self.scored += 1
        self.buffer.append(z)
        del self.buffer[: -self.options.history]
        if self.real_seen % self.options.train_every == 0 and len(self.buffer) >= 4:
            self._train()
        with torch.no_grad():
            seq = torch.stack(self.buffer)[None]  # (1, T, F)
            out, h = self.net(seq)
            self.h, self.next_pred = h, out[0, -1]

    def _train(self) -> None:
        seq = torch.stack(self.buffer)[None]  # (1, T, F)
        for _ in range(self.options.train_iters):
            out, _ = self.net(seq[:, :-1])
            loss = ((out - seq[:, 1:]) ** 2).mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()

    def rebase(self, params: list[torch.Tensor]) -> None:
        super().rebase(params)
        self._rollout = None

    # -- predicting --------------------------------------------------------------------------

    @property
    def trusted(self) -> bool:
        return self.scored >= self.options.min_scored and self.err_rssm < self.err_base

    @property
    def confidence(self) -> float:
        return super().confidence if self.trusted else 0.0

    def _advance(self) -> torch.Tensor:
        """One rollout step: the predicted next feature vector (denormalised)."""
        if self._rollout is None:
            self._rollout = (self.next_pred, self.h)
        z, h = self._rollout
        with torch.no_grad():
            out, h2 = self.net(z[None, None], h)
        self._rollout = (out[0, -1], h2)
        return self._denormalise(z)

    def predict(self, params: list[torch.Tensor], lr: float) -> list[torch.Tensor]:
        if self.ema is None or self.next_pred is None:
            return super().predict(params, lr)
        raw = self._advance()
        self._rollout_dloss = float(raw[0])
        sizes = torch.exp(raw[1:]).double()  # predicted update norm per group
        ema_norms = torch.stack(torch._foreach_norm(self.ema)).double().cpu()
        group_norm = torch.zeros_like(sizes).index_add_(0, self.group_of, ema_norms**2).sqrt()
        ratio = (sizes / group_norm.clamp_min(1e-30))[self.group_of]  # per tensor
        ratio = ratio.clamp(0.0, 4.0) * self.scale * self._lr_ratio(lr)
        return [d * float(r) for d, r in zip(self.ema, ratio.tolist(), strict=True)]

    def predicted_loss(self, k: int) -> float:
        if self.next_pred is None:
            return super().predicted_loss(k)
        return self.loss + k * getattr(self, "_rollout_dloss", self.loss_slope)

    # -- state -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["rssm"] = {
            "net": self.net.state_dict(), "opt": self.opt.state_dict(), "buffer": list(self.buffer),
            "mean": self.mean, "var": self.var, "stat_count": self.stat_count, "h": self.h,
            "next_pred": self.next_pred, "err_rssm": self.err_rssm, "err_base": self.err_base,
            "scored": self.scored, "real_seen": self.real_seen, "prev_loss": self._prev_loss,
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        r = state["rssm"]
        self.net.load_state_dict(r["net"])
        self.opt.load_state_dict(r["opt"])
        self.buffer, self.mean, self.var = list(r["buffer"]), r["mean"], r["var"]
        self.stat_count, self.h, self.next_pred = r["stat_count"], r["h"], r["next_pred"]
        self.err_rssm, self.err_base, self.scored = r["err_rssm"], r["err_base"], r["scored"]
        self.real_seen, self._prev_loss = r["real_seen"], r["prev_loss"]
        self._rollout = None
