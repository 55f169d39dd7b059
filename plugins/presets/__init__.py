"""Presets shipped with phasetrain: TOML files in this package, runnable from an installed wheel."""

from __future__ import annotations

from importlib import resources
from typing import Any

from phasetrain import hookimpl


@hookimpl
def phasetrain_presets() -> dict[str, Any]:
    here = resources.files(__name__)
    return {
        entry.name.removesuffix(".toml"): entry
        for entry in here.iterdir()
        if entry.name.endswith(".toml")
    }
