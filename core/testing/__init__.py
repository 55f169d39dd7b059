"""phasetrain.testing: a conformance kit for plugin authors.

One line in a plugin's test suite runs every invariant phasetrain depends on for a component,
driven by hypothesis::

    from phasetrain.testing import check_component

    def test_lion_meets_phasetrain_contracts():
        check_component("optimizer", "lion")

A broken promise raises :class:`ContractViolation`; its message starts with the contract's
name (``"optimizer.state_round_trip: ..."``) and ends with the minimal failing example. The
pieces are public too: :mod:`~phasetrain.testing.strategies` (hypothesis strategies), every
contract as a function (``phasetrain.testing.optimizer.state_round_trip("lion")``),
:class:`HookRecorder`, and a pytest plugin (fixtures ``phasetrain_plugin_manager``,
``hook_recorder``, ``short_run``; marker ``phasetrain_component(kind, name)``).
See docs/testing-plugins.md.

This module imports lazily: the pytest plugin loads it in every test session of an environment
with phasetrain installed, so it must not pull in torch or hypothesis until a check runs.
"""

from __future__ import annotations

from typing import Any

from phasetrain.testing.violation import ContractViolation, Outcome, Report

_LAZY = {
    "check_component": "phasetrain.testing.kit",
    "check_contract": "phasetrain.testing.kit",
    "contracts_for": "phasetrain.testing.kit",
    "kinds_with_contracts": "phasetrain.testing.kit",
    "installed": "phasetrain.testing.kit",
    "Settings": "phasetrain.testing.context",
    "short_run": "phasetrain.testing.context",
    "HookRecorder": "phasetrain.testing.recorder",
    "expected_events": "phasetrain.testing.recorder",
    "CONTRACTS": "phasetrain.testing.contract",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        try:
            module = importlib.import_module(_LAZY[name])
            if name == "CONTRACTS":
                importlib.import_module("phasetrain.testing.kit")  # declares every contract
        except ModuleNotFoundError as exc:
            if exc.name == "hypothesis":
                raise ImportError("phasetrain.testing needs hypothesis: pip install 'phasetrain[test]'") from exc
            raise
        return getattr(module, name)
    raise AttributeError(f"module 'phasetrain.testing' has no attribute {name!r}")


__all__ = ["ContractViolation", "Outcome", "Report", *_LAZY]
