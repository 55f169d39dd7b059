"""docs/hooks.md documents every hook in hookspecs with its exact signature."""

from __future__ import annotations

import inspect
import re

import pluggy

from phasetrain import hookspecs

from .conftest import ROOT


def spec_signatures() -> dict[str, str]:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return {
        name: f"{name}{inspect.signature(getattr(hookspecs, name))}".replace("'", "")
        for name in dir(pm.hook)
        if not name.startswith("_")
    }


def documented() -> dict[str, str]:
    text = (ROOT / "docs" / "hooks.md").read_text()
    return {m.group(1): m.group(0)[4:-1] for m in re.finditer(r"^## `(\w+)\(.*\).*`$", text, re.M)}


def test_every_hook_is_documented_with_its_exact_signature():
    specs, docs = spec_signatures(), documented()
    missing = sorted(set(specs) - set(docs))
    assert not missing, f"hooks missing from docs/hooks.md: {missing}"
    for name, signature in specs.items():
        assert docs[name] == signature, f"docs/hooks.md has {docs[name]!r}, hookspecs has {signature!r}"


def test_docs_do_not_describe_hooks_that_do_not_exist():
    assert not set(documented()) - set(spec_signatures())


def test_every_hookspec_has_a_contract_docstring():
    for name in spec_signatures():
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert len(doc.split()) >= 15, f"{name} needs a docstring stating when it fires and what it returns"


def test_hooks_reference_is_generated_from_the_hookspecs():
    from phasetrain.plugins import docgen

    current = (ROOT / "docs" / "hooks.md").read_text()
    assert current == docgen.render_hooks(), f"docs/hooks.md is stale; regenerate it with\n    {docgen.HOOKS_COMMAND}"
