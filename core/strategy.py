"""The kernel's strategy: one process, one device.

A strategy decides how the model is wrapped, how work is split across processes and how they
agree (see :class:`phasetrain.types.Strategy`). ``single`` is the kernel's own and what a run
uses when no plugin offers a default; distributed strategies come from plugins.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from phasetrain.errors import BadInput
from phasetrain.hookspecs import hookimpl
from phasetrain.registry import Component, NoOptions


def resolve_device(name: str, local_rank: int = 0, spread: bool = False) -> torch.device:
    """``run.device`` as a torch device; ``spread`` puts plain ``cuda`` on ``cuda:local_rank``."""
    name = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    try:
        device = torch.device("cuda", local_rank) if name == "cuda" and spread else torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise BadInput(f"run.device: {name!r} is not a device ({exc})") from None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.type not in ("cpu", "cuda"):
        raise BadInput(f"run.device: {name!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if device.type == "cuda" and (count == 0 or (device.index or 0) >= count):
        raise BadInput(f"run.device: {name!r} was asked for but this machine has {count} CUDA device(s)")
    return device


class SingleProcess:
    """One process: no wrapping, no splitting, every agreement is with oneself."""

    rank, size, local_rank, main = 0, 1, 0, True
    wrap = shard = mean = any = staticmethod(lambda value: value)  # the model, the batch, the loss, a flag
    gather = staticmethod(lambda obj: [obj])
    no_sync = staticmethod(lambda module: contextlib.nullcontext())
    barrier = close = staticmethod(lambda: None)

    def __init__(self, options: Any = None, ctx: Any = None):
        pass

    def device(self, name: str) -> torch.device:
        return resolve_device(name)


@hookimpl
def phasetrain_components() -> list[Component]:
    return [Component("strategy", "single", SingleProcess, NoOptions, "one process on one device")]
