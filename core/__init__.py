"""phasetrain: a PyTorch training framework built as a small kernel plus plugins.

The public surface::

    phasetrain.Trainer.from_config("regression", ["run.steps=100"]).fit()
    phasetrain.load_checkpoint(run_dir)      # plain containers of tensors
    phasetrain.load_model(run_dir)           # the trained nn.Module, in eval mode
    phasetrain.hookimpl                      # mark a plugin's hook implementations
    phasetrain.Component                     # what a plugin's phasetrain_components returns
    phasetrain.Kind                          # what a plugin's phasetrain_kinds returns
    phasetrain.Phase                         # what a schedule returns (see phasetrain.types)
"""

from importlib.metadata import PackageNotFoundError, version

from phasetrain.hookspecs import hookimpl, hookspec
from phasetrain.registry import Component, Kind, NoOptions

try:
    __version__ = version("phasetrain")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"


def __getattr__(name: str):  # the heavier modules load on first use
    if name == "Trainer":
        from phasetrain.loop import Trainer

        return Trainer
    if name in ("load_checkpoint", "load_model"):
        from phasetrain import checkpoint

        return getattr(checkpoint, name)
    if name in ("Phase", "Outcome", "TrainState"):
        from phasetrain import types

        return getattr(types, name)
    if name == "Config":
        from phasetrain.config import Config

        return Config
    raise AttributeError(f"module 'phasetrain' has no attribute {name!r}")


__all__ = [
    "Component",
    "Config",
    "Kind",
    "NoOptions",
    "Outcome",
    "Phase",
    "Trainer",
    "__version__",
    "hookimpl",
    "hookspec",
    "load_checkpoint",
    "load_model",
]
