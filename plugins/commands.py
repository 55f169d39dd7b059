"""``phasetrain plugins``, ``phasetrain presets`` and ``phasetrain kinds``: what is installed.

Contributed through ``phasetrain_add_commands`` like any plugin's command. ``plugins`` lists
every plugin with its distribution, the components and hooks it contributes, and every broken
plugin with its error; ``kinds`` lists the kinds of component a config may choose, with who
declares them and their default.
"""

from __future__ import annotations

import argparse
import tomllib
from typing import Any

from phasetrain import hookimpl

HIDDEN = ("phasetrain_kinds", "phasetrain_components", "phasetrain_presets")


def cmd_plugins(_args: argparse.Namespace) -> int:
    from phasetrain.registry import load_registry

    registry = load_registry()
    by_plugin: dict[int, list[Any]] = {}
    for entry in registry.components():
        by_plugin.setdefault(id(entry.origin.plugin), []).append(entry.component)
    declared = {name: registry.kind_origin(name) for name in registry.kinds}
    pm = registry.plugin_manager()
    print(f"{'plugin':<16} {'distribution':<26} {'kinds':<22} components / hooks")
    for info in registry.plugins:
        components = by_plugin.get(id(info.plugin), [])
        kinds = sorted({c.kind for c in components})
        parts = [", ".join(c.name for c in components)] if components else []
        own = [k for k, origin in declared.items() if origin is info]
        if own:
            parts.append("declares kinds: " + ", ".join(own))
        hooks = sorted(h.name for h in pm.get_hookcallers(info.plugin) or [] if h.name not in HIDDEN)
        if hooks:
            parts.append("hooks: " + ", ".join(hooks))
        presets = [n for n, (_, origin) in registry.presets().items() if origin is info]
        if presets:
            parts.append("presets: " + ", ".join(presets))
        dist = f"{info.distribution} {info.version}"
        print(f"{info.name:<16} {dist:<26} {','.join(kinds) or '-':<22} {'; '.join(parts)}")
    for info in registry.broken:
        dist = f"{info.distribution} {info.version}"
        print(f"{info.name:<16} {dist:<26} {'BROKEN':<22} {info.error}")
    for text in registry.conflicts():
        print(f"{'(conflict)':<16} {'':<26} {'BROKEN':<22} {text}")
    return 0


def cmd_kinds(_args: argparse.Namespace) -> int:
    from phasetrain.registry import load_registry

    registry = load_registry()
    print(f"{'kind':<13} {'section':<14} {'declared by':<24} {'default':<10} summary")
    for kind in registry.kinds.values():
        origin = registry.kind_origin(kind.name)
        who = origin.distribution if origin else "phasetrain (kernel)"
        default = registry.default(kind.name) or ("required" if kind.required else "-")
        section = f"[{kind.key}.NAME]" if kind.many else f"[{kind.key}]"
        print(f"{kind.name:<13} {section:<14} {who:<24} {default:<10} {kind.summary}")
    return 0


def cmd_presets(_args: argparse.Namespace) -> int:
    from phasetrain.registry import load_registry

    for name, (resource, origin) in load_registry().presets().items():
        text = resource.read_text() if hasattr(resource, "read_text") else ""
        first = text.splitlines()[0] if text else ""
        about = first.lstrip("# ").strip() if first.startswith("#") else ""
        try:
            task = tomllib.loads(text).get("task", {}).get("use", "?")
        except (tomllib.TOMLDecodeError, AttributeError):
            task = "?"
        print(f"{name:<20} {task:<12} {origin.distribution:<14} {about}")
    return 0


@hookimpl
def phasetrain_add_commands(subparsers: Any) -> None:
    subparsers.add_parser("plugins", help="list installed plugins, their components and distributions"
                          ).set_defaults(handler=cmd_plugins)
    subparsers.add_parser("presets", help="list the presets installed plugins offer").set_defaults(handler=cmd_presets)
    subparsers.add_parser("kinds", help="list the kinds of component a config may choose").set_defaults(handler=cmd_kinds)
