"""``check_component``: every contract a component's kind has, in one call.

    from phasetrain.testing import check_component
    report = check_component("optimizer", "lion")        # raises ContractViolation if broken
    print(report)                                          # each contract: passed/skipped, seconds
"""

from __future__ import annotations

from typing import Any

import importlib

from phasetrain.testing import generic  # noqa: F401  (declares the generic contracts)
from phasetrain.testing.context import Settings, Subject
from phasetrain.testing.contract import CONTRACTS, GENERIC, Contract, run
from phasetrain.testing.violation import Report, violation_from


def load_contracts(registry: Any = None) -> None:
    """Import the contract module of every kind that names one (``Kind.contracts``): kernel kinds
    have theirs in ``phasetrain.testing``, a plugin's kinds have theirs beside the plugin."""
    from phasetrain.registry import load_registry

    for kind in (registry or load_registry()).kinds.values():
        if kind.contracts:
            importlib.import_module(kind.contracts)


def kinds_with_contracts(registry: Any = None) -> list[str]:
    """Component kinds the kit has contracts for (the generic ones apply to these kinds only:
    the kit knows how to build them in a context of their own)."""
    from phasetrain.registry import load_registry
    from phasetrain.testing.contract import CONTEXTS

    registry = registry or load_registry()
    load_contracts(registry)
    own = {c.kind for c in CONTRACTS.values() if c.kind != GENERIC} | set(CONTEXTS)
    return [kind for kind in registry.kinds if kind in own]


def contracts_for(kind: str, registry: Any = None) -> list[Contract]:
    """The contracts a component of ``kind`` must meet: the generic ones first, then its own."""
    from phasetrain.testing.contract import CONTEXTS

    load_contracts(registry)
    own = [c for c in CONTRACTS.values() if c.kind == kind]
    if not own and kind not in CONTEXTS:
        return []
    return [c for c in CONTRACTS.values() if c.kind == GENERIC] + own


def check_component(kind: str, name: str, *, only: list[str] | None = None, skip: list[str] | None = None,
                    **settings: Any) -> Report:
    """Run every contract of ``kind`` (or those named in ``only``, minus ``skip``) for the
    component ``name`` and return the report; raise :class:`ContractViolation` if any broke.

    ``settings`` are the fields of :class:`phasetrain.testing.context.Settings`: ``examples``,
    ``options`` (fixed option values), ``context`` (config sections replacing the kit's),
    ``device``, ``steps``, ``plugins`` (plugin objects providing components that are not
    installed), ``volatile``, ``phase`` and ``derandomize``.
    """
    from phasetrain.errors import BadInput

    from phasetrain.testing.context import registry_with

    registry = registry_with(settings.get("plugins", ()))
    contracts = contracts_for(kind, registry)
    if not contracts:
        raise BadInput(f"phasetrain.testing has no contracts for kind {kind!r} "
                       f"(kinds with contracts: {', '.join(kinds_with_contracts())})")
    names = {c.name for c in contracts}
    for name_ in [*(only or ()), *(skip or ())]:
        if name_ not in names:
            raise BadInput(f"phasetrain.testing: {kind} has no contract {name_!r} (its contracts: {', '.join(sorted(names))})")
    chosen = [c for c in contracts if (only is None or c.name in only) and c.name not in (skip or ())]
    subject = Subject(kind, name, Settings.of(settings))
    report = Report(kind, name, [run(c, subject) for c in chosen])
    if not report.passed:
        raise violation_from(report)
    return report


def check_contract(contract: str, kind: str, name: str, **settings: Any) -> Any:
    """Check one contract by name (``"optimizer.state_round_trip"``) for one component."""
    from phasetrain.errors import BadInput

    load_contracts()
    if contract not in CONTRACTS:
        raise BadInput(f"phasetrain.testing: no contract {contract!r} (contracts: {', '.join(CONTRACTS)})")
    found = CONTRACTS[contract]
    return found(kind, name, **settings) if found.kind == GENERIC else found(name, **settings)


def installed(builtin_only: bool = False) -> list[tuple[str, str]]:
    """``(kind, name)`` of every installed component the kit has contracts for (phasetrain's own
    only with ``builtin_only``), for parametrizing a test over them."""
    from phasetrain.registry import Registry, discover, load_registry

    registry = Registry(discover(autoload=False)) if builtin_only else load_registry()
    return [(kind, name) for kind in kinds_with_contracts(registry) for name in registry.names(kind)]
