"""Reading a run back: ``phasetrain.load_checkpoint`` and ``phasetrain.load_model``, through the
stores. This plugin adds both to the ``phasetrain`` namespace with the ``phasetrain_api`` hook.

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

from phasetrain import hookimpl
from phasetrain.errors import BadInput, CheckpointError
from phasetrain.registry import load_registry


def stores(registry: Any = None) -> list[Any]:
    """Every installed ``[store]`` component, the default one first, built for reading outside a run."""
    registry = registry or load_registry()
    if not (names := registry.defaults("store")):
        raise BadInput("no installed plugin offers a default [store] to read checkpoints with")
    ordered = sorted(registry.names("store"), key=lambda name: name != names[0])
    return [(c := registry.get("store", name)).factory(c.config(), None) for name in ordered]


def load_checkpoint(path: str | Path, which: str = "last") -> dict[str, Any]:
    """Load a checkpoint as plain containers of tensors and numbers.

    ``path`` is a run directory (its latest good checkpoint is used), a directory of runs with a
    ``latest`` pointer (``runs/regression``: the latest run's) or a checkpoint directory.
    ``which`` other than ``"last"`` picks a checkpoint the run keeps under that name (``"best"``
    with ``[best_checkpoints]``), found through the ``phasetrain_named_checkpoint`` hook. The
    result has at least ``"model"`` (a state dict), ``"optimizers"``, ``"trainer"`` and
    ``"meta"`` (step, config, versions).
    """
    path = Path(path) / "latest" if (Path(path) / "latest").is_dir() else Path(path)
    if which != "last":
        found = load_registry().plugin_manager().hook.phasetrain_named_checkpoint(run_dir=path, which=which)
        if found is None:
            raise BadInput(f"{path}: the run keeps no checkpoint named {which!r} (\"last\" is the newest)")
        path = found
    failures = []
    for store in stores():
        try:
            _path, state, meta = store.latest(path)
            return {**state, "meta": meta}
        except CheckpointError as exc:
            failures.append(exc)
    raise CheckpointError("; ".join(dict.fromkeys(str(exc) for exc in failures)))  # what each store found


def load_model(run_dir: str | Path, model: torch.nn.Module | None = None, *, which: str = "last", trust_code: bool = False) -> torch.nn.Module:
    """The trained model of a run (as :func:`load_checkpoint` finds it), in eval mode: its weights
    loaded into ``model`` when given, or into a model rebuilt from the run's config.

    ``which`` is ``"last"`` (the newest good checkpoint) or a name the run keeps (``"best"``).
    Rebuilding runs no code that a config recorded in the run directory names (an import path)
    unless the user's own config names it too or ``trust_code`` is True: a run directory from
    elsewhere cannot run code (see docs/your-model.md).
    """
    from phasetrain import config as config_mod
    from phasetrain.loop import Trainer
    from phasetrain.types import ExportsModel

    state = load_checkpoint(run_dir, which)
    if model is not None:
        model.load_state_dict(state["model"])
        return model.eval()
    cfg = config_mod.build(state["meta"]["config"], overrides=["strategy={use='single'}"], source=str(run_dir))
    cfg.run.device = "cpu"
    for key, value in cfg.sections.items():  # no logs, no files: only the model is wanted
        if isinstance(value, dict):
            cfg.sections[key] = {name: attrs.evolve(o, enabled=False) for name, o in value.items()}
    trainer = Trainer(cfg, trust_code=trust_code, model_only=True, run_dir=run_dir)  # claims no run directory
    trainer.model.load_state_dict(state["model"])
    task = trainer.task
    return (task.export_model(trainer.model) if isinstance(task, ExportsModel) else trainer.model).eval()


@hookimpl
def phasetrain_api() -> dict[str, Any]:
    return {"load_checkpoint": load_checkpoint, "load_model": load_model}
