"""``phasetrain help [KIND [NAME]]``: a component's options, with their types, defaults and docs.

``help`` alone lists the kinds; ``help KIND`` the components of a kind with their summaries;
``help KIND NAME`` one component: where it comes from, what it is, and every key its config
section takes, read from its options class the way ``docs/configuration.md`` is (so installed
third-party components are covered too). ``help run`` shows the ``[run]`` table.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

import attrs

from phasetrain import hookimpl
from phasetrain.errors import UnknownComponent


def options_text(cls: type, indent: str = "  ") -> list[str]:
    """One block per key of an options class: ``key = default  (type)`` and its doc below."""
    from phasetrain.plugins.docgen import default_of, field_docs, nested_classes, type_name

    if not attrs.has(cls) or not [f for f in attrs.fields(cls) if not f.name.startswith("_")]:
        return [f"{indent}no options"]
    docs, lines = field_docs(cls), []
    for field in attrs.fields(cls):
        if field.name.startswith("_"):
            continue
        lines.append(f"{indent}{field.name} = {default_of(field)}  ({type_name(cls, field)})")
        if doc := docs.get(field.name):
            lines += textwrap.wrap(doc, 96, initial_indent=indent + "    ", subsequent_indent=indent + "    ")
    for name, nested in dict(nested_classes(cls)).items():
        lines += ["", f"{indent}each entry of {name}:", *options_text(nested, indent + "  ")]
    return lines


def describe(kind: str | None, name: str | None) -> str:
    """What ``phasetrain help KIND NAME`` prints."""
    from phasetrain.config import RunConfig
    from phasetrain.plugins.docgen import _class_doc
    from phasetrain.registry import load_registry

    registry = load_registry()
    if kind == "run":
        return "\n".join(["[run]: settings of the run itself", "", *options_text(RunConfig)])
    if kind is None:
        width = max(len(k) for k in registry.kinds)
        rows = [f"  {k:<{width}}  {spec.summary}" for k, spec in registry.kinds.items()]
        return "\n".join(["kinds (phasetrain help KIND lists its components; help run shows [run]):", *rows])
    if kind not in registry.kinds:
        raise UnknownComponent("kind", kind, [*registry.kinds, "run"])
    spec = registry.kind(kind)
    if name is None:
        names = registry.names(kind)
        width = max((len(n) for n in names), default=0)
        defaults = registry.defaults(kind)
        rows = [f"  {n:<{width}}  {registry.get(kind, n).summary}{'  (default)' if n in defaults else ''}" for n in names]
        section = f"[{spec.key}.NAME] (one table per component)" if spec.many else f'[{spec.key}] use = "NAME"'
        return "\n".join([f"{kind}: {spec.summary}", f"config: {section}", "", *rows])
    component = registry.get(kind, name)  # UnknownComponent names the choices
    origin = registry.origin(kind, name)
    where = f"{origin.distribution} {origin.version}"
    section = f"[{spec.key}.{name}]" if spec.many else f'[{spec.key}]\nuse = "{name}"'
    about = component.summary or _class_doc(component.config)
    return "\n".join([f"{kind} {name!r} from {where}: {about}", "", section, *options_text(component.config)])


def cmd_help(args: argparse.Namespace) -> int:
    print(describe(args.kind, args.name))
    return 0


@hookimpl
def phasetrain_add_commands(subparsers: Any) -> None:
    parser = subparsers.add_parser("help", help="show a component's options with their docs",
                                   description="phasetrain help [KIND [NAME]]: the kinds, a kind's components, "
                                               "or one component's options (help run: the [run] table).")
    parser.add_argument("kind", nargs="?", metavar="KIND")
    parser.add_argument("name", nargs="?", metavar="NAME")
    parser.set_defaults(handler=cmd_help)
