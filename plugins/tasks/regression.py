"""The ``regression`` task: a small MLP fitting a smooth synthetic function. Seconds per run.

Data: ``n_train`` + ``n_eval`` inputs x ~ U[-1, 1]^in_dim and targets
y = sin(x·w1) + 0.5 cos(x·w2) + noise, drawn once from the run's seed. Mini-batches follow a
fresh permutation per epoch, so batch ``i`` is a pure function of (seed, i): the data position
is just the count of batches consumed.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import nn

from phasetrain.config import in_range, non_negative, one_of

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


@attrs.define
class RegressionOptions:
    """Sizes have upper bounds far above what the task is for, so that a typo fails at start-up."""

    in_dim: int = attrs.field(default=8, validator=in_range(1, 2**16))
    hidden: int = attrs.field(default=64, validator=in_range(1, 2**16))
    depth: int = attrs.field(default=2, validator=in_range(1, 1024))  # hidden layers
    activation: str = attrs.field(default="tanh", validator=one_of(*ACTIVATIONS))
    n_train: int = attrs.field(default=4096, validator=in_range(1, 2**27))
    n_eval: int = attrs.field(default=1024, validator=in_range(1, 2**27))
    batch_size: int = attrs.field(default=64, validator=in_range(0, 2**27))  # 0: full batch
    noise: float = attrs.field(default=0.01, validator=non_negative)


def mlp(sizes: list[int], activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class Regression:
    def __init__(self, options: RegressionOptions, ctx: Any):
        self.options = o = options
        device = ctx.device
        g = torch.Generator().manual_seed(ctx.seed + 7919)
        n = o.n_train + o.n_eval
        x = torch.rand(n, o.in_dim, generator=g) * 2 - 1  # (N, in_dim)
        w1, w2 = torch.randn(2, o.in_dim, generator=g) / o.in_dim**0.5
        y = torch.sin(3 * x @ w1) + 0.5 * torch.cos(2 * x @ w2) + o.noise * torch.randn(n, generator=g)
        # Inputs in the parameters' dtype (float64 under precision fp64); drawn in float32 first
        # so that the data are the same values whatever the precision.
        precision = ctx.component("precision")
        dtype = getattr(precision, "dtype", torch.float32)
        x, y = x.to(dtype), y.to(dtype)
        self.x_train, self.y_train = x[: o.n_train].to(device), y[: o.n_train, None].to(device)
        self.x_eval, self.y_eval = x[o.n_train :].to(device), y[o.n_train :, None].to(device)
        self.batch_size = o.batch_size or o.n_train
        self.per_epoch = o.n_train // self.batch_size
        self._seed = ctx.seed
        self._epoch: int | None = None  # batch(-1) lies in epoch -1: never a valid sentinel
        self._perm = torch.empty(0, dtype=torch.long)
        model = mlp([o.in_dim] + [o.hidden] * o.depth + [1], ACTIVATIONS[o.activation])
        self.model = precision.prepare(model.to(device))

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batch_size >= self.options.n_train:
            return self.x_train, self.y_train
        epoch, pos = divmod(index, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self._seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.options.n_train, generator=g).to(self.x_train.device)
            self._epoch = epoch
        idx = self._perm[pos * self.batch_size : (pos + 1) * self.batch_size]
        return self.x_train[idx], self.y_train[idx]

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(model(x), y)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {"eval_loss": self.loss(model, (self.x_eval, self.y_eval)).item()}
