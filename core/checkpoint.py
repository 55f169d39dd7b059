"""Reading a run back: ``load_checkpoint`` and ``load_model``, through the run's ``[store]``.

Writing, retention and finding the newest good checkpoint are the store component's job
(``phasetrain.types.Store``; the default ``local`` store keeps atomic, checksummed directories
that load with ``weights_only``). Reading outside a run asks the installed default store first
and then every other installed store, so a run whose config chose another store (a sharded
one, say) is read back too; if none can, the error says what each store found.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch

from phasetrain.errors import BadInput, CheckpointError


def stores(registry: Any = None) -> list[Any]:
    """Every installed ``[store]`` component, the default one first, built for reading outside a run."""
    from phasetrain.registry import load_registry

    registry = registry or load_registry()
    if not (names := registry.defaults("store")):
        raise BadInput("no installed plugin offers a default [store] to read checkpoints with")
    ordered = sorted(registry.names("store"), key=lambda name: name != names[0])
    return [(c := registry.get("store", name)).factory(c.config(), None) for name in ordered]


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint as plain containers of tensors and numbers.

    ``path`` is a run directory (its latest good checkpoint is used) or a checkpoint directory.
    The result has at least ``"model"`` (a state dict), ``"optimizers"``, ``"trainer"`` and
    ``"meta"`` (step, config, versions).
    """
    failures = []
    for store in stores():
        try:
            _path, state, meta = store.latest(Path(path))
            return {**state, "meta": meta}
        except CheckpointError as exc:
            failures.append(exc)
    raise CheckpointError("; ".join(dict.fromkeys(str(exc) for exc in failures)))  # what each store found


def load_model(run_dir: str | Path) -> torch.nn.Module:
    """The trained model of a run, rebuilt from its config and weights, in eval mode."""
    from phasetrain import config as config_mod
    from phasetrain.loop import Trainer
    from phasetrain.types import ExportsModel

    state = load_checkpoint(run_dir)
    cfg = config_mod.build(state["meta"]["config"], overrides=["strategy={use='single'}"], source=str(run_dir))
    cfg.run.device = "cpu"
    for key, value in cfg.sections.items():  # no logs, no files: only the model is wanted
        if isinstance(value, dict):
            cfg.sections[key] = {name: attrs.evolve(o, enabled=False) for name, o in value.items()}
    trainer = Trainer(cfg)
    trainer.model.load_state_dict(state["model"])
    task = trainer.task
    return (task.export_model(trainer.model) if isinstance(task, ExportsModel) else trainer.model).eval()
