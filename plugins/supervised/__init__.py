"""The ``supervised`` task and ``phasetrain.fit``: train your own model on your own data.

``[task] use = "supervised"`` names a model, datasets, a loss and metrics by import path
(:mod:`.options`); :mod:`.task` builds and checks them, :mod:`.loading` reads the data through
DataLoaders that resume exactly, :mod:`.measures` holds the losses and the torchmetrics metrics,
:mod:`.imports` resolves import paths safely and :mod:`.api` is ``phasetrain.fit``. The
``digits`` and ``breast-cancer`` presets use :mod:`.examples`. See docs/your-model.md.
"""

from __future__ import annotations

from typing import Any

from phasetrain import Component, hookimpl


def supervised(options: Any, ctx: Any) -> Any:
    """The task's factory; torchmetrics (slow to import) loads only when a run uses the task."""
    from phasetrain.plugins.supervised.task import Supervised

    return Supervised(options, ctx)


@hookimpl
def phasetrain_components() -> list[Component]:
    from phasetrain.plugins.supervised.options import SupervisedOptions

    return [Component("task", "supervised", supervised, SupervisedOptions,
                      "any nn.Module on any Dataset by import path: DataLoaders, exact resume, torchmetrics")]


@hookimpl
def phasetrain_api() -> dict[str, Any]:
    from phasetrain.plugins.supervised.api import fit

    return {"fit": fit}
