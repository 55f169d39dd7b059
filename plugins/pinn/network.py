"""The PINN network: an MLP that takes raw coordinates and normalises them itself.

The box ``[lower, upper]`` of the problem is stored as buffers and every input is mapped affinely
to ``[-1, 1]`` inside ``forward``. That keeps tanh units out of saturation for domains such as
``t in [0, 1]`` and, because the map travels with the weights, a saved model (and
``phasetrain.load_model``) takes coordinates exactly as the problem states them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .inverse import Unknown, Unknowns


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
        first_layer_scale: factor on the first linear layer's initial weights (SIREN's ``w0``
            with ``activation = "sin"``); 1 keeps the plain Glorot initialisation.
        fourier_features: ``m > 0`` feeds ``[cos(2 pi z B), sin(2 pi z B)]`` (2m features) of the
            normalised input ``z`` to the MLP instead of ``z``, with ``B`` (d, m) drawn once from
            ``N(0, fourier_scale^2)`` and kept as a buffer (so it is saved with the weights);
            0 feeds ``z`` itself.
        fourier_scale: standard deviation of the entries of ``B``.
        periodic: input columns embedded as ``cos(pi k z), sin(pi k z)``, ``k = 1..periodic_modes``,
            of their normalised value ``z`` in ``[-1, 1]``: the network is then exactly periodic
            over the box in those columns, in its value and every derivative (a hard constraint).
        periodic_modes: harmonics per periodic column.
        output: ``output(x, raw) -> u``, applied to the MLP's output (a problem's hard
            constraint, e.g. an initial condition built into the network); ``None``: ``u = raw``.
        unknowns: trainable coefficients of an inverse problem, kept at ``self.unknowns`` so the
            optimizers train them and checkpoints carry them with the weights.

    Weights are Glorot-normal and biases zero (the usual PINN initialisation, Raissi et al.),
    drawn from torch's global generator, which the Trainer seeds (as is ``B``, before them).
    """

    def __init__(
        self,
        lower: Sequence[float],
        upper: Sequence[float],
        out_dim: int,
        hidden: int = 20,
        depth: int = 8,
        activation: str = "tanh",
        first_layer_scale: float = 1.0,
        fourier_features: int = 0,
        fourier_scale: float = 1.0,
        periodic: Sequence[int] = (),
        periodic_modes: int = 1,
        output: Callable[[Tensor, Tensor], Tensor] | None = None,
        unknowns: Mapping[str, Unknown] | None = None,
    ) -> None:
        super().__init__()
        lo = torch.as_tensor(lower, dtype=torch.float64)
        hi = torch.as_tensor(upper, dtype=torch.float64)
        self.register_buffer("centre", (hi + lo) / 2)  # (d,)
        self.register_buffer("half_width", (hi - lo) / 2)  # (d,)
        self.periodic = [int(k) for k in periodic]
        self.plain = [k for k in range(lo.numel()) if k not in self.periodic]
        if self.periodic:  # only then: checkpoints of other networks keep their keys
            self.register_buffer("harmonics", math.pi * torch.arange(1, periodic_modes + 1, dtype=torch.float64))
        n_z = len(self.plain) + 2 * periodic_modes * len(self.periodic)
        self.fourier: Tensor | None
        if fourier_features > 0:
            b = torch.randn(n_z, fourier_features, dtype=torch.float64) * fourier_scale
            self.register_buffer("fourier", b)  # (n_z, m)
            n_in = 2 * fourier_features
        else:
            self.fourier = None
            n_in = n_z
        self.output = output
        self.unknowns = Unknowns(unknowns) if unknowns else None
        sizes = [n_in] + [hidden] * depth + [out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            linear = nn.Linear(a, b, dtype=torch.float64)
            nn.init.xavier_normal_(linear.weight)
            if i == 0 and first_layer_scale != 1.0:
                with torch.no_grad():
                    linear.weight.mul_(first_layer_scale)
            nn.init.zeros_(linear.bias)
            layers.append(linear)
            if i < len(sizes) - 2:
                layers.append(ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(self.centre.dtype)  # a no-op when the caller already uses the model's dtype
        z = (x - self.centre) / self.half_width
        if self.periodic:
            angles = z[:, self.periodic, None] * self.harmonics  # (N, p, K)
            z = torch.cat([z[:, self.plain], torch.cos(angles).flatten(1), torch.sin(angles).flatten(1)], dim=1)
        if self.fourier is not None:
            zb = (2 * math.pi) * (z @ self.fourier)
            z = torch.cat([torch.cos(zb), torch.sin(zb)], dim=-1)
        raw = self.net(z)
        return raw if self.output is None else self.output(x, raw)
