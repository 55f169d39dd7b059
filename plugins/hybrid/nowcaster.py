"""The ``nowcaster`` dynamics model: a small per-parameter network learned across runs.

Every scalar weight is predicted on its own from its own history (as in WNN, Jang et al.,
2023), by one small MLP shared by all scalars of all models:

- inputs, for ``K`` snapshots ``w_0 .. w_(K-1)`` one spacing apart: the values relative to the
  last one ``(w_i - w_(K-1)) / s`` and the differences ``(w_(i+1) - w_i) / s``, where ``s`` is
  the scalar's RMS difference, plus ``log(s / S)`` with ``S`` the mean ``s`` of its tensor (is
  this a fast or a slow coordinate of its layer?), all clipped to [-10, 10];
- outputs: ``(w_(K-1+h) - w_(K-1)) / s`` for the horizons ``h`` in ``HORIZONS`` spacings;
  between them ``nowcast`` interpolates linearly, below the first it scales the first, above
  the last it stays at the last.

A scalar that did not move (``s = 0``) is predicted not to move. The weights were trained by
``python -m phasetrain.plugins.hybrid.train_nowcaster`` on trajectories that phasetrain
recorded from a family of tasks, ``burgers`` and ``lm`` held out; they ship in
``data/nowcaster.pt`` with their data card (``data/nowcaster.md``) and load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from importlib import resources
from typing import Any

import attrs
import torch
from torch import nn

from phasetrain.errors import BadInput
from phasetrain.plugins.distributed import is_dtensor
from phasetrain.plugins.hybrid.snapshots import SnapshotDynamics, SnapshotOptions, Tensors, relative_to_last

HORIZONS = (1.0, 2.0, 4.0, 8.0)
CLIP = 10.0
TINY = 1e-30
WEIGHTS = "nowcaster.pt"  # in the package's data folder


def feature_count(snapshots: int) -> int:
    return 2 * (snapshots - 1) + 1


def features(rel: torch.Tensor, mean: Any = torch.mean) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of the network for the scalars of one tensor.

    ``rel`` is (K - 1, N): ``w_i - w_last`` for the snapshots but the last, float32. Returns the
    features (N, 2K - 1) and each scalar's scale ``s`` (N,). ``mean`` averages ``s`` over the
    whole tensor (for a shard: over every process's part).
    """
    diffs = torch.diff(torch.cat([rel, rel.new_zeros(1, rel.shape[1])]), dim=0)  # (K - 1, N)
    s = diffs.square().mean(0).sqrt()  # (N,)
    inv = torch.where(s > 0, 1.0 / s.clamp_min(TINY), torch.zeros_like(s))
    layer = mean(s).clamp_min(TINY)
    ratio = torch.log(s.clamp_min(TINY) / layer).where(s > 0, torch.zeros_like(s))
    x = torch.cat([rel * inv, diffs * inv, ratio[None]]).T  # (N, 2K - 1)
    return x.clamp(-CLIP, CLIP), s


def horizon_weights(ahead: float) -> list[float]:
    """How the outputs for ``HORIZONS`` combine into the prediction ``ahead`` spacings on."""
    w = [0.0] * len(HORIZONS)
    if ahead <= HORIZONS[0]:
        w[0] = ahead / HORIZONS[0]
    elif ahead >= HORIZONS[-1]:
        w[-1] = 1.0
    else:
        for i in range(len(HORIZONS) - 1):
            lo, hi = HORIZONS[i], HORIZONS[i + 1]
            if lo <= ahead <= hi:
                w[i], w[i + 1] = (hi - ahead) / (hi - lo), (ahead - lo) / (hi - lo)
                break
    return w


class Net(nn.Module):
    def __init__(self, snapshots: int, hidden: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(feature_count(snapshots), hidden), nn.GELU(),
            nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, len(HORIZONS)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)  # (N, F) -> (N, H), displacements in units of s


def load_weights(source: Any = None) -> dict[str, Any]:
    """The shipped weights (or those in the file ``source``), read without unpickling objects."""
    if source is not None:
        return torch.load(source, map_location="cpu", weights_only=True)
    with resources.as_file(resources.files("phasetrain.plugins.hybrid") / "data" / WEIGHTS) as path:
        return torch.load(path, map_location="cpu", weights_only=True)


def build_net(saved: dict[str, Any]) -> Net:
    net = Net(int(saved["snapshots"]), int(saved["hidden"]))
    net.load_state_dict(saved["state"])
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def nowcast_with(net: Net, history: Sequence[Sequence[torch.Tensor]], ahead: float, chunk: int = 1 << 16) -> Tensors:
    """The network's displacement of every tensor ``ahead`` spacings past the last snapshot."""
    mix = torch.tensor(horizon_weights(ahead))
    out = []
    with torch.no_grad():
        for i, rel in enumerate(zip(*relative_to_last(history), strict=True)):
            last = history[-1][i]
            shard = is_dtensor(last)  # under fsdp: this process's part, and the layer mean of all parts
            if shard:
                rel = [r.to_local() for r in rel]
            stacked = torch.stack([r.reshape(-1) for r in rel]).float().cpu()  # (K - 1, N)
            x, s = features(stacked, mean=_mean_over(last) if shard else torch.mean)
            y = torch.cat([net(part) for part in x.split(chunk)]) if x.shape[0] else x.new_zeros(0, len(HORIZONS))
            local = last.to_local() if shard else last
            step = ((y @ mix) * s).reshape(local.shape).to(local.dtype).to(local.device)
            out.append(type(last).from_local(step, last.device_mesh, last.placements, shape=last.shape,
                                             stride=last.stride(), run_check=False) if shard else step)
    return out


def _mean_over(sharded: Any) -> Any:
    """The mean over every process's part of a sharded tensor: one all-reduce of two numbers."""
    import torch.distributed as dist

    group, device = sharded.device_mesh.get_group(), sharded.to_local().device  # nccl reduces on the GPU

    def mean(s: torch.Tensor) -> torch.Tensor:
        total = torch.tensor([float(s.double().sum()), float(s.numel())], dtype=torch.float64, device=device)
        dist.all_reduce(total, group=group)
        return (total[0] / total[1].clamp_min(1)).to("cpu", s.dtype)

    return mean


@attrs.define
class NowcasterOptions(SnapshotOptions):
    weights: str = ""  # a file of weights to use instead of the shipped ones (same format)


class LearnedNowcaster(SnapshotDynamics):
    """The learned per-parameter nowcaster (see the module docstring)."""

    kind = "nowcaster"

    def __init__(self, options: NowcasterOptions, ctx: Any):
        super().__init__(options, ctx)
        try:
            saved = load_weights(options.weights or None)
            self.net = build_net(saved)
        except (OSError, RuntimeError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as exc:
            where = options.weights or "the shipped file"
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BadInput(f"dynamics.weights: cannot load nowcaster weights from {where}: {first}") from None
        self.snapshots = int(saved["snapshots"])

    def nowcast(self, history: Sequence[Sequence[torch.Tensor]], ahead: float) -> Tensors:
        if len(history) != self.snapshots:
            raise ValueError(f"the nowcaster reads {self.snapshots} snapshots, got {len(history)}")
        return nowcast_with(self.net, history, ahead)
