"""``phasetrain.fit``: train your own module on your own data from Python, no package needed.

It writes the ``[task]`` section of a ``supervised`` run for you and hands the run your live
objects (``Trainer(objects=...)``): the config records ``"@train_data"`` for a dataset object
and the import path of your model's class (``"__main__:Net"``), so ``load_model`` can rebuild
the model later, while this run trains the very instance you passed.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from phasetrain.errors import CheckpointError


def import_path(obj: Any) -> str | None:
    """``"module:QualName"`` of a class or function, or ``None`` if it cannot be imported by name."""
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    return f"{module}:{name}" if module and name and "<locals>" not in name else None


def fit(model: nn.Module | type | str, train_data: Any, *, val_data: Any = None, loss: Any = "cross_entropy",
        metrics: Iterable[str] = (), model_args: Mapping[str, Any] | None = None,
        config: str | Path | Mapping[str, Any] | None = None, overrides: Iterable[str] = (), resume: bool = False,
        plugins: Iterable[Any] = ()) -> Any:
    """Train ``model`` on ``train_data`` and return the run's :class:`phasetrain.types.Outcome`.

    ``model`` is an ``nn.Module`` instance, a class or function returning one (called with
    ``model_args``), or an import path. ``train_data`` and ``val_data`` are datasets of
    ``(input, target)`` pairs (map-style or iterable) or import paths. ``loss`` is a built-in
    name (``"cross_entropy"``, ``"mse"``, ...), an import path or a function
    ``f(output, target)``. ``metrics`` are built-in names (``"accuracy"``, ``"f1"``, ``"mse"``,
    ...) or import paths of torchmetrics metrics. ``config`` (a preset, a file or a mapping)
    gives the rest of the run, ``overrides`` change it as ``--set`` does (``"run.steps=2000"``).
    With ``resume``, a run directory that holds checkpoints continues from its latest good one.
    """
    from phasetrain import config as config_mod
    from phasetrain.loop import Trainer
    from phasetrain.registry import PluginInfo, load_registry

    plugins = list(plugins)
    registry = load_registry([p for p in plugins if isinstance(p, PluginInfo)])
    if config is None:
        raw: dict[str, Any] = {}
    elif isinstance(config, Mapping):
        raw = copy.deepcopy(dict(config))
    else:
        raw = config_mod.resolve_source(str(config), registry)[1]
    objects: dict[str, Any] = {}
    task = dict(raw.get("task", {})) if raw.get("task", {}).get("use") == "supervised" else {}
    task.update(use="supervised", model_args=dict(model_args or {}), metrics=list(metrics))
    if isinstance(model, nn.Module):
        task["model"] = import_path(type(model)) or "@model"
        objects[task["model"]] = model
    else:
        task["model"] = model if isinstance(model, str) else _named(model, "@model", objects)
    for field, args, data in (("train_data", "train_args", train_data), ("val_data", "val_args", val_data)):
        if not isinstance(data, str):  # a live dataset (or none): no arguments to call it with
            task[field], task[args] = "" if data is None else _object(f"@{field}", data, objects), {}
        else:
            task[field] = data
    task["loss"] = loss if isinstance(loss, str) else _object("@loss", loss, objects)
    raw["task"] = task
    cfg = config_mod.build(raw, overrides=overrides, source="phasetrain.fit", registry=registry)
    trainer = Trainer(cfg, registry=registry, plugins=[p for p in plugins if not isinstance(p, PluginInfo)],
                      objects=objects)
    try:
        if resume:
            _resume(trainer)
        return trainer.fit()
    finally:
        trainer.strategy.close()


def _object(key: str, obj: Any, objects: dict[str, Any]) -> str:
    objects[key] = obj
    return key


def _named(obj: Any, fallback: str, objects: dict[str, Any]) -> str:
    """A class or function by its import path (the run imports it), or as a live object."""
    path = import_path(obj)
    return path if path is not None and path.split(":")[0] in sys.modules else _object(fallback, obj, objects)


def _resume(trainer: Any) -> None:
    """Continue from the latest good checkpoint; a run directory that holds none starts afresh."""
    try:
        path = trainer.resume(report=lambda message: print(f"phasetrain: {message}", file=sys.stderr))
    except CheckpointError:
        if any(Path(trainer.out_dir).rglob("meta.json")):
            raise
        return
    if trainer.strategy.main:
        print(f"phasetrain: resuming from {path}")
