"""Reading a run back: ``load_checkpoint`` and ``load_model``, through the run's ``[store]``.

Writing, retention and finding the newest good checkpoint are the store component's job
(``phasetrain.types.Store``; the default ``local`` store keeps atomic, checksummed directories
that load with ``weights_only``). Reading outside a run uses the installed default store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch

from phasetrain.errors import BadInput


def default_store(registry: Any = None) -> Any:
    """The default ``[store]`` component, built for reading outside a run."""
    from phasetrain.registry import load_registry

    registry = registry or load_registry()
    if not (names := registry.defaults("store")):
        raise BadInput("no installed plugin offers a default [store] to read checkpoints with")
    component = registry.get("store", names[0])
    return component.factory(component.config(), None)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint as plain containers of tensors and numbers.

    ``path`` is a run directory (its latest good checkpoint is used), a directory of runs with a
    ``latest`` pointer (``runs/regression``: the latest run's) or a checkpoint directory. The
    result has at least ``"model"`` (a state dict), ``"optimizers"``, ``"trainer"`` and ``"meta"``
    (step, config, versions).
    """
    path = Path(path) / "latest" if (Path(path) / "latest").is_dir() else Path(path)
    _path, state, meta = default_store().latest(path)
    return {**state, "meta": meta}


def load_model(run_dir: str | Path) -> torch.nn.Module:
    """The trained model of a run (as :func:`load_checkpoint` finds it), rebuilt from its config
    and weights, in eval mode."""
    from phasetrain import config as config_mod
    from phasetrain.loop import Trainer
    from phasetrain.types import ExportsModel

    state = load_checkpoint(run_dir)
    cfg = config_mod.build(state["meta"]["config"], source=str(run_dir))
    cfg.run.device = "cpu"
    for key, value in cfg.sections.items():  # no logs, no files: only the model is wanted
        if isinstance(value, dict):
            cfg.sections[key] = {name: attrs.evolve(o, enabled=False) for name, o in value.items()}
    trainer = Trainer(cfg, run_dir=run_dir)  # only reads: no run directory is claimed
    trainer.model.load_state_dict(state["model"])
    task = trainer.task
    return (task.export_model(trainer.model) if isinstance(task, ExportsModel) else trainer.model).eval()
