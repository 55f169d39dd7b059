"""Helpers shared by the observers that write files: which process writes, where (a path inside
the run directory), and metrics as numbers.

Under ``torchrun`` every rank runs the same hooks; only rank 0 writes logs, so that one run gives
one metrics file and one TensorBoard run. Metrics arrive as mappings whose values may be 0-dim
tensors, Python numbers or anything else a plugin added; files want plain finite-or-null numbers.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import attrs
import torch

from phasetrain.config import FieldValueError


def is_writer() -> bool:
    """True unless torch.distributed is initialised and this process is not rank 0."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


def inside_run_dir(_instance: Any, attribute: attrs.Attribute, value: str) -> None:
    """Validator of an observer's file or directory option: a relative path that stays inside
    ``run.out_dir`` (not absolute, no ``..`` out of it), so that a run writes only its own files."""
    if not value.strip() or "\0" in value:
        raise FieldValueError(attribute.name, f"must name a path, got {value!r}")
    if os.path.isabs(value) or os.path.normpath(value).split(os.sep)[0] == os.pardir:
        raise FieldValueError(attribute.name, f"must be a path inside the run directory, got {value!r}")


def as_number(value: Any) -> float | int | bool | None:
    """A scalar metric as a plain number, or ``None`` when ``value`` is not a scalar number.

    0-dim (or one-element) tensors become floats (bool tensors become bools); Python ints and
    bools stay as they are; NumPy scalars become Python numbers.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        return bool(value.item()) if value.dtype == torch.bool else float(value.item())
    if isinstance(value, (bool, int, float)):
        return value
    item = getattr(value, "item", None)  # NumPy scalars
    if callable(item) and getattr(value, "shape", None) == ():
        out = item()
        return out if isinstance(out, (bool, int, float)) else None
    return None


def numeric_fields(metrics: Mapping[str, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The scalar numeric fields of ``metrics`` as plain numbers, in their original order."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if key in skip:
            continue
        number = as_number(value)
        if number is not None:
            out[str(key)] = number
    return out


def finite_or_none(value: Any) -> Any:
    """Non-finite floats as ``None``, so that files stay strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunClock:
    """Seconds of training since the run started, continued across resumes.

    ``start(offset)`` is called at ``train_start`` with the training time already spent before a
    resume (0 for a fresh run); ``now()`` then counts on from there.
    """

    def __init__(self) -> None:
        self._t0 = time.perf_counter()
        self._offset = 0.0

    def start(self, offset: float = 0.0) -> None:
        self._t0, self._offset = time.perf_counter(), offset

    def now(self) -> float:
        return self._offset + time.perf_counter() - self._t0


def phase_number(phases: list[str], phase: Any, previous: Any) -> int | None:
    """The number a tracker plots for ``phase`` on entering it: its index in ``phases`` (names in
    order of first appearance, appended to here). ``None`` when a resume re-enters a phase already
    recorded, which a tracker should not record again."""
    known = phase.name in phases
    if not known:
        phases.append(phase.name)
    return None if previous is None and known else phases.index(phase.name)


def flatten_config(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config as ``{"optimizer.lr": 0.001, ...}``: numbers, strings and booleans as they are,
    lists as JSON, ``None`` left out (what TensorBoard's HParams and MLflow's params accept)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten_config(value, name))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        elif value is not None:  # lists and tuples, e.g. betas or stages
            out[name] = json.dumps(value, default=str)
    return out
