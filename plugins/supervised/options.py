"""The ``[task]`` options of ``supervised``: what to import, how to load it, what to measure.

Import paths are ``"package.module:attribute"`` (``"package.module.attribute"`` works too), or
``"@name"`` for a live object handed to the run (``phasetrain.fit`` does that). They are only
checked for form here: nothing is imported until the task is built (see ``imports.py``).
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from phasetrain.config import FieldValueError, non_negative, positive, resumable

#: Losses by name: each is ``f(output, target) -> scalar`` from ``torch.nn.functional``.
LOSSES = ("cross_entropy", "nll", "bce", "mse", "mae", "smooth_l1", "huber")

#: Metrics by name: torchmetrics classes chosen by the model's output width (see metrics.py).
METRICS = ("accuracy", "f1", "precision", "recall", "mse", "mae", "r2")

_PATH = re.compile(r"^(@\w+|[A-Za-z_][\w.]*:[A-Za-z_][\w.]*|[A-Za-z_]\w*(\.[A-Za-z_]\w*)+)$")


def is_path(value: str) -> bool:
    """``value`` has the form of an import path or a live object's ``@name``."""
    return bool(_PATH.match(value))


def _import_path(optional: bool) -> Any:
    def check(_instance: Any, attribute: attrs.Attribute, value: str) -> None:
        if (value or not optional) and not is_path(value):
            raise FieldValueError(attribute.name, f"must be an import path such as 'mypkg.nets:Net' "
                                  f"(or '@name' for an object given to phasetrain.fit), got {value!r}")

    return check


def _named_or_path(names: tuple[str, ...]) -> Any:
    def check(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        for item in value if isinstance(value, list) else [value]:
            if item not in names and not is_path(item):
                raise FieldValueError(attribute.name, f"{item!r} is neither a built-in name ({', '.join(names)}) "
                                      "nor an import path such as 'mypkg.losses:focal'")

    return check


@attrs.define
class LoaderOptions:
    """How the datasets are read: a ``torch.utils.data.DataLoader`` per dataset."""

    batch_size: int = attrs.field(default=64, validator=positive)  # the global batch: N processes read batch_size / N each
    shuffle: bool = True  # a new order each epoch, drawn from (run.seed, epoch)
    drop_last: bool = False  # leave out each epoch's last, incomplete batch
    num_workers: int = attrs.field(default=0, validator=non_negative)  # loader processes; 0 reads in the training process
    pin_memory: bool = False  # page-locked host memory, for faster copies to a GPU
    persistent_workers: bool = False  # keep the evaluation loader's workers between evaluations
    prefetch_factor: int = attrs.field(default=2, validator=positive)  # batches each worker loads ahead
    eval_batch_size: int = attrs.field(default=0, validator=non_negative)  # 0: batch_size


@attrs.define
class SupervisedOptions:
    """Any ``nn.Module`` on any dataset of ``(input, target)`` pairs, by import path."""

    model: str = attrs.field(default="", validator=_import_path(optional=True))  # a callable returning an nn.Module (required)
    model_args: dict[str, Any] = attrs.field(factory=dict)  # keyword arguments of the model callable
    train_data: str = attrs.field(default="", validator=_import_path(optional=True))  # a Dataset, or a callable returning one (required)
    train_args: dict[str, Any] = attrs.field(factory=dict)  # keyword arguments of the train_data callable
    val_data: str = attrs.field(default="", validator=_import_path(optional=True))  # held-out Dataset for evaluation; "" for none
    val_args: dict[str, Any] = attrs.field(factory=dict)  # keyword arguments of the val_data callable
    loss: str = attrs.field(default="cross_entropy", validator=_named_or_path(LOSSES))  # a built-in name or an import path
    loss_args: dict[str, Any] = attrs.field(factory=dict)  # keyword arguments of the loss
    metrics: list[str] = attrs.field(factory=list, validator=_named_or_path(METRICS))  # computed on val_data with torchmetrics
    metric_args: dict[str, dict[str, Any]] = attrs.field(factory=dict)  # keyword arguments per metric, by its entry in metrics
    # Only batch_size, shuffle and drop_last decide the order of the data: the task refuses a
    # resume that changes them; the other loader options may change.
    loader: LoaderOptions = resumable(factory=LoaderOptions)
