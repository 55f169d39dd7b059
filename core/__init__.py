"""phasetrain: a PyTorch training framework built as a small kernel plus plugins.

The public surface::

    phasetrain.Trainer.from_config("regression", ["run.steps=100"]).fit()
    phasetrain.load_checkpoint(run_dir)      # plain containers of tensors      (the reading plugin)
    phasetrain.load_model(run_dir)           # the trained nn.Module, in eval mode
    phasetrain.fit(MyNet(), train_set, val_data=val_set)   # from the supervised plugin
    phasetrain.hookimpl                      # mark a plugin's hook implementations
    phasetrain.Component                     # what a plugin's phasetrain_components returns
    phasetrain.Kind                          # what a plugin's phasetrain_kinds returns
    phasetrain.Phase                         # what a schedule returns (see phasetrain.types)
"""

from importlib.metadata import PackageNotFoundError, version

from phasetrain.hookspecs import hookimpl, hookspec
from phasetrain.registry import Component, Kind, NoOptions, load_registry as _load_registry

try:
    __version__ = version("phasetrain")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"


_LAZY = {"Trainer": "loop", "Config": "config", "Phase": "types", "Outcome": "types", "TrainState": "types"}


def __getattr__(name: str):  # the heavier modules load on first use; plugins add functions
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(f"phasetrain.{_LAZY[name]}"), name)
    for functions in [] if name.startswith("_") else _load_registry().plugin_manager().hook.phasetrain_api():
        if name in functions:  # load_checkpoint and load_model (plugins/reading.py), fit (supervised), ...
            globals()[name] = functions[name]
            return functions[name]
    raise AttributeError(f"module 'phasetrain' has no attribute {name!r}")


__all__ = ["Component", "Kind", "NoOptions", "__version__", "hookimpl", "hookspec", *_LAZY]
