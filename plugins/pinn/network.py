"""The PINN network: an MLP that takes raw coordinates and normalises them itself.

The box ``[lower, upper]`` of the problem is stored as buffers and every input is mapped affinely
to ``[-1, 1]`` inside ``forward``. That keeps tanh units out of saturation for domains such as
``t in [0, 1]`` and, because the map travels with the weights, a saved model (and
``phasetrain.load_model``) takes coordinates exactly as the problem states them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Sin(nn.Module):
    """``sin`` as a module (SIREN-style periodic activation)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(x)


ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "sin": Sin, "silu": nn.SiLU, "gelu": nn.GELU}


class PINNNet(nn.Module):
    """``u = MLP((x - centre) / half_width)`` for raw coordinates ``x`` (N, d) -> (N, n_out).

    Args:
        lower, upper: the box, in the problem's input order.
        out_dim: number of output fields.
        hidden: width of every hidden layer.
        depth: number of hidden layers.
        activation: a key of :data:`ACTIVATIONS`.

    Weights are Glorot-normal and biases zero (the usual PINN initialisation, Raissi et al.),
    drawn from torch's global generator, which the Trainer seeds.
    """

    def __init__(
        self,
        lower: Sequence[float],
        upper: Sequence[float],
        out_dim: int,
        hidden: int = 20,
        depth: int = 8,
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        lo = torch.as_tensor(lower, dtype=torch.float64)
        hi = torch.as_tensor(upper, dtype=torch.float64)
        self.register_buffer("centre", (hi + lo) / 2)  # (d,)
        self.register_buffer("half_width", (hi - lo) / 2)  # (d,)
        sizes = [lo.numel()] + [hidden] * depth + [out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            linear = nn.Linear(a, b, dtype=torch.float64)
            nn.init.xavier_normal_(linear.weight)
            nn.init.zeros_(linear.bias)
            layers.append(linear)
            if i < len(sizes) - 2:
                layers.append(ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(self.centre.dtype)  # a no-op when the caller already uses the model's dtype
        return self.net((x - self.centre) / self.half_width)
