"""phasetrain's pytest plugin, registered through the ``pytest11`` entry point.

Fixtures:

- ``phasetrain_plugin_manager``: a fresh pluggy manager with every installed phasetrain plugin
  registered and checked (what a run starts from);
- ``hook_recorder``: a :class:`phasetrain.testing.HookRecorder` to pass as ``plugins=[...]``;
- ``short_run``: ``short_run(source="regression", overrides=(), steps=4, plugins=(), ...)``
  trains a preset, file, mapping or Config for a few steps in the test's ``tmp_path`` and
  returns the Trainer.

Marker: ``@pytest.mark.phasetrain_component(kind, name, **settings)`` runs every phasetrain
contract for the component before the test body (the test fails with the first broken
contract's name and minimal example); settings are those of
:func:`phasetrain.testing.check_component`.

Every pytest session of an environment with phasetrain installed loads this module, so it
imports nothing heavy at the top: torch, hypothesis and the kit load when a fixture or the
marker is used.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator, Iterable
from typing import Any

import pytest

MARKER = "phasetrain_component"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(kind, name, **settings): run phasetrain's conformance contracts for the "
        "component before the test (see phasetrain.testing.check_component)",
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    marker = item.get_closest_marker(MARKER)
    if marker is not None:
        from phasetrain.testing import check_component

        report = check_component(*marker.args, **marker.kwargs)
        item.user_properties.append(("phasetrain_contracts", str(report)))
    return (yield)


@pytest.fixture
def phasetrain_plugin_manager() -> Any:
    """A fresh plugin manager with every installed phasetrain plugin registered."""
    from phasetrain.registry import load_registry

    return load_registry().plugin_manager()


@pytest.fixture
def hook_recorder() -> Any:
    """A hook recorder: pass it in ``plugins=[...]``, read ``.events`` and ``.losses``."""
    from phasetrain.testing.recorder import HookRecorder

    return HookRecorder()


@pytest.fixture
def short_run(tmp_path: Any) -> Callable[..., Any]:
    """``short_run(source="regression", overrides=(), *, steps=4, plugins=(), device=None,
    fit=True)``: a quiet run of a few steps in a fresh directory under ``tmp_path``."""
    from phasetrain.testing.context import short_run as run

    counter = itertools.count(1)

    def start(source: Any = "regression", overrides: Iterable[str] = (), **kwargs: Any) -> Any:
        return run(source, overrides, out_dir=tmp_path / f"run-{next(counter)}", **kwargs)

    return start
