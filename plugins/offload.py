"""Built-in offload strategies: where optimizer state lives in each phase."""

from __future__ import annotations

from typing import Any

from phasetrain import Component, NoOptions, hookimpl


class NoOffload:
    """Optimizer state stays where the optimizer put it."""

    def __init__(self, options: NoOptions, ctx: Any):
        pass


@hookimpl
def phasetrain_components() -> list[Component]:
    return [Component("offload", "none", NoOffload, NoOptions, "optimizer state stays on the device")]
