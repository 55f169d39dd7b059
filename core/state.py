"""Pieces of a run's state that are not a component's: random generators as plain tensors, and
the check that a state holds only what ``torch.load(weights_only=True)`` reads back."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


#: Leaves a checkpoint may hold (containers: dict, list, tuple); nothing else is written.
PLAIN = (torch.Tensor, bool, int, float, str, bytes, type(None), torch.dtype, torch.device)


def rng_state() -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["mt"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def not_plain(state: Any, path: str = "") -> tuple[str, str] | None:
    """The path and type of the first value or dict key a checkpoint cannot hold, or None."""
    if isinstance(state, Mapping):
        for key, item in state.items():
            where = f"{path}.{key}" if path else str(key)
            if not isinstance(key, (str, int)):
                return where, f"a {type(key).__name__} key"
            if found := not_plain(item, where):
                return found
        return None
    if isinstance(state, (list, tuple)):
        return next((f for i, item in enumerate(state) if (f := not_plain(item, f"{path}[{i}]"))), None)
    return None if isinstance(state, PLAIN) else (path, type(state).__name__)
