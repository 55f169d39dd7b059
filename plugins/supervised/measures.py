"""Losses (built-in names or import paths) and metrics (torchmetrics), resolved for one task.

A loss is ``f(output, target) -> scalar tensor``. A metric is a ``torchmetrics.Metric``: the
built-in names pick the torchmetrics class that fits the model's output, which the task reads
from one probe batch before training (``classes`` below: the width of the output's last
dimension; 1, or no class dimension, means a binary or regression output). Over several
processes torchmetrics gathers every metric's state in ``compute()``, so the numbers are those
of the whole validation set.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torchmetrics
from torch.nn import functional as F

from phasetrain.plugins.supervised.imports import Resolver, split
from phasetrain.plugins.supervised.options import LOSSES, METRICS

_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "cross_entropy": F.cross_entropy,
    "nll": F.nll_loss,
    "bce": F.binary_cross_entropy_with_logits,
    "mse": F.mse_loss,
    "mae": F.l1_loss,
    "smooth_l1": F.smooth_l1_loss,
    "huber": F.huber_loss,
}
assert set(_LOSSES) == set(LOSSES)

#: Losses that compare outputs and targets element by element (their shapes must agree).
ELEMENTWISE = {"bce", "mse", "mae", "smooth_l1", "huber"}


def loss_function(name: str, args: dict[str, Any], resolver: Resolver) -> Callable[..., torch.Tensor]:
    """The loss named ``name``: a built-in, a function, or a class (an ``nn.Module`` loss)."""
    if name in _LOSSES:
        return functools.partial(_LOSSES[name], **args) if args else _LOSSES[name]
    found = resolver.load("loss", name)
    if isinstance(found, type):
        return resolver.build("loss", name, ("loss_args", args), callable, "a loss")
    if not callable(found):
        raise resolver.error("loss", f"{name!r} is a {type(found).__name__}, not a function or a loss class")
    return functools.partial(found, **args) if args else found


def classes(output: torch.Tensor) -> int:
    """How many classes an output of the model scores (1: binary, or not a classifier)."""
    return int(output.shape[-1]) if output.dim() >= 2 else 1


def _builtin(name: str, n: int, args: dict[str, Any]) -> torchmetrics.Metric:
    regression = {"mse": torchmetrics.MeanSquaredError, "mae": torchmetrics.MeanAbsoluteError,
                  "r2": torchmetrics.R2Score}
    if name in regression:
        return regression[name](**args)
    average = {"accuracy": "micro"}.get(name, "macro")  # accuracy: the fraction right; the others per class
    task = {"task": "binary"} if n == 1 else {"task": "multiclass", "num_classes": n, "average": average}
    kind = {"accuracy": torchmetrics.Accuracy, "f1": torchmetrics.F1Score, "precision": torchmetrics.Precision,
            "recall": torchmetrics.Recall}[name]
    return kind(**{**task, **args})


def metric_name(entry: str) -> str:
    """The key a metric's value is logged under: its built-in name, or its path's last part."""
    return entry if entry in METRICS else split(entry)[1].rsplit(".", 1)[-1]


def build_metrics(entries: list[str], all_args: dict[str, dict[str, Any]], n: int, resolver: Resolver,
                  device: torch.device) -> dict[str, torchmetrics.Metric]:
    if unknown := sorted(set(all_args) - set(entries)):
        raise resolver.error("metric_args", f"{unknown[0]!r} is not one of the metrics ({', '.join(entries) or 'none'})")
    out: dict[str, torchmetrics.Metric] = {}
    for entry in entries:
        args = dict(all_args.get(entry, {}))
        if entry in METRICS:
            try:
                metric = _builtin(entry, n, args)
            except (TypeError, ValueError) as exc:
                raise resolver.error("metric_args", f"{entry}: {exc}") from None
        else:
            metric = resolver.build("metrics", entry, ("metric_args", args),
                                    lambda m: isinstance(m, torchmetrics.Metric), "a torchmetrics.Metric")
        if (name := metric_name(entry)) in out or name == "eval_loss":
            raise resolver.error("metrics", f"two metrics would be logged as {name!r}")
        out[name] = metric.to(device)
    return out


def fit_shapes(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The output as metrics compare it: a trailing dimension of 1 dropped when the target has none."""
    if output.dim() == target.dim() + 1 and output.shape[-1] == 1:
        return output.squeeze(-1)
    return output
