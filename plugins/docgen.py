"""Generate the configuration reference (docs/configuration.md) from the code.

Every key a config may set is a field of an attrs class: ``RunConfig`` for ``[run]`` and each
component's options class for its section. This module walks phasetrain's own registered
components (installed third-party plugins are left out, so the page is the same everywhere) and
prints Markdown: per kind, per component, a table of keys with their type, default and meaning.
The meaning is the field's ``metadata["doc"]`` or else the comment on its line in the source, so
the reference says exactly what the code says. ``tests/test_docs.py`` fails when the page is
stale::

    .venv/bin/python -m phasetrain.plugins.docgen > docs/configuration.md
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import math
import re
import textwrap
import tokenize
import typing
from collections.abc import Iterator
from typing import Any

import attrs

from phasetrain import config as config_mod
from phasetrain.registry import Registry, discover

COMMAND = ".venv/bin/python -m phasetrain.plugins.docgen > docs/configuration.md"


# ---------------------------------------------------------------------------------------------
# What the source says about each field
# ---------------------------------------------------------------------------------------------


def _comments(cls: type) -> dict[str, str]:
    """Field name → the comment on its line (or the comment lines right above it) in ``cls``."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    by_line: dict[int, str] = {}
    full_line: set[int] = set()
    lines = source.splitlines()
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                by_line[tok.start[0]] = tok.string.lstrip("#").strip()
                if not lines[tok.start[0] - 1][: tok.start[1]].strip():
                    full_line.add(tok.start[0])
    except (tokenize.TokenError, IndentationError):
        return {}
    tree = ast.parse(source)
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    out: dict[str, str] = {}
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        end = node.end_lineno or node.lineno
        inline = [by_line[n] for n in range(node.lineno, end + 1) if n in by_line and n not in full_line]
        above: list[str] = []
        n = node.lineno - 1
        while n in full_line:
            above.insert(0, by_line[n])
            n -= 1
        text = " ".join(inline) or " ".join(above)
        if text and not text.startswith("noqa"):
            out[node.target.id] = text
    return out


def field_docs(cls: type) -> dict[str, str]:
    """Descriptions of every field of ``cls``, inherited ones included (the subclass wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if attrs.has(klass):
            docs.update(_comments(klass))
    for field in attrs.fields(cls):
        if "doc" in field.metadata:
            docs[field.name] = str(field.metadata["doc"])
    return docs


def type_name(cls: type, field: attrs.Attribute) -> str:
    """The annotation as written in the source. ``field.type`` is not used: cattrs resolves
    string annotations in place once a class has been structured, which would make the page
    depend on what ran before it."""
    written: Any = field.type
    for klass in cls.__mro__:
        annotations = klass.__dict__.get("__annotations__", {})
        if field.name in annotations:
            written = annotations[field.name]
            break
    if not isinstance(written, str):
        plain = isinstance(written, type) and not typing.get_args(written)
        written = written.__name__ if plain else str(written)
    return re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", written)


def toml_value(value: Any) -> str:
    """A default as an inline TOML value, the way a user would write it."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, config_mod.Choice):
        options = attrs.asdict(value.options) if attrs.has(type(value.options)) else {}
        return toml_value({"use": value.use, **options})
    if attrs.has(type(value)):
        return toml_value(attrs.asdict(value, recurse=False))
    if isinstance(value, dict):
        inner = ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items() if v is not None)
        return "{" + inner + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def default_of(field: attrs.Attribute) -> str:
    default = field.default
    if default is attrs.NOTHING:
        return "required"
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        default = default.factory() if not default.takes_self else None
        if default is None:
            return "computed"
    return toml_value(default)


def nested_classes(cls: type) -> Iterator[tuple[str, type]]:
    """(field name, attrs class) for fields that hold other attrs classes (e.g. stages)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that cannot be resolved here: no nested tables
        return

    def walk(hint: Any) -> Iterator[type]:
        if isinstance(hint, type) and attrs.has(hint) and not issubclass(hint, config_mod.Choice):
            yield hint
        for arg in typing.get_args(hint):
            yield from walk(arg)

    for field in attrs.fields(cls):
        for found in walk(hints.get(field.name)):
            yield field.name, found


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def options_table(cls: type) -> list[str]:
    if not attrs.has(cls) or not attrs.fields(cls):
        return ["No options."]
    docs = field_docs(cls)
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for field in attrs.fields(cls):
        if field.name.startswith("_"):
            continue
        rows.append(f"| `{field.name}` | `{_cell(type_name(cls, field))}` | `{_cell(default_of(field))}` "
                    f"| {_cell(docs.get(field.name, ''))} |")
    return rows


def _class_doc(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    if not doc or doc == inspect.getdoc(object) or doc.startswith(cls.__name__ + "("):
        return ""  # attrs' generated signature, not a description
    return " ".join(doc.split("\n\n")[0].split())


def component_section(kind: str, name: str, component: Any, origin: str) -> list[str]:
    lines = [f"### `{name}`", ""]
    about = component.summary or _class_doc(component.config)
    lines += [f"{about} *(plugin `{origin}`)*" if about else f"*(plugin `{origin}`)*", ""]
    lines += options_table(component.config)
    seen: set[type] = set()
    for field_name, nested in nested_classes(component.config):
        if nested in seen:
            continue
        seen.add(nested)
        where = f"[[observers.{name}.{field_name}]]" if kind == "observer" else f"[[{kind}.{field_name}]]"
        lines += ["", f"Each entry of `{field_name}` (`{where}`):", ""]
        lines += options_table(nested)
    return lines + [""]


def render(registry: Registry | None = None) -> str:
    """The whole configuration reference as Markdown."""
    registry = registry or Registry(discover(autoload=False))
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated from the code by `python -m phasetrain.plugins.docgen`; do not edit by hand.",
        f"     Regenerate with: {COMMAND} -->",
        "",
        "A config is a TOML (or JSON) file with a `[run]` table and one section per component kind.",
        "`use = \"name\"` chooses the component; every other key of the section belongs to that",
        "component's options, listed below with their type, default and meaning. Unknown keys,",
        "wrong types and out-of-range values are errors naming the file and the dotted key. Any key",
        "can also be set on the command line: `--set optimizer.lr=1e-3`.",
        "",
        "Types are Python annotations: `int`, `float`, `str`, `bool`, `list[...]`, `tuple[...]`;",
        "`OptimizerChoice` (and the other `...Choice` types) is a table that chooses a component of",
        "that kind, such as `{ use = \"lbfgs\", max_iter = 20 }`. This page lists phasetrain's own",
        "components; `phasetrain plugins` shows what installed plugins add.",
        "",
        "## `[run]`",
        "",
        _class_doc(config_mod.RunConfig),
        "",
        *options_table(config_mod.RunConfig),
        "",
    ]
    for kind in registry.kinds.values():
        names = registry.names(kind.name)
        origin = registry.kind_origin(kind.name)
        by = f" Declared by the `{origin.name}` plugin." if origin else ""
        if kind.many:
            heading = f"## {kind.name} (`[{kind.key}.NAME]`)"
            on = ", ".join(f"`{n}`" for n in registry.defaults(kind.name)) or "none"
            default = (f"Several may be on at once, each under its own name. On by default: {on}; "
                       "each also takes `enabled = false` to switch it off.")
        else:
            heading = f"## {kind.name} (`[{kind.key}]`)"
            chosen = (registry.defaults(kind.name) or [None])[0]
            if chosen:
                default = f"Default: `use = \"{chosen}\"`."
            elif kind.required:
                default = "Required: a config must choose one."
            else:
                default = "Absent unless a config chooses one."
        what = kind.summary
        proto = kind.protocol
        follows = f" Components follow `{proto.__module__}.{proto.__name__}`." if proto is not None else ""
        out += [heading, "", f"{what[0].upper()}{what[1:]}. {default}{by}{follows}", ""]
        if not names:
            out += ["No built-in component of this kind.", ""]
        for name in names:
            component = registry.get(kind.name, name)
            out += component_section(kind.name, name, component, registry.origin(kind.name, name).name)
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------
# docs/hooks.md, from phasetrain.hookspecs
# ---------------------------------------------------------------------------------------------

HOOKS_COMMAND = ".venv/bin/python -m phasetrain.plugins.docgen hooks > docs/hooks.md"


def _rst_to_md(text: str) -> str:
    """Docstring markup as Markdown: ``code`` -> `code`, :class:`x` -> `x`."""
    text = re.sub(r":(?:class|func|meth|mod):`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def hook_signature(name: str) -> str:
    from phasetrain import hookspecs

    return f"{name}{inspect.signature(getattr(hookspecs, name))}".replace("'", "")


def render_hooks() -> str:
    """The hook reference as Markdown: the protocol, then every hook in the order of
    ``hookspecs``, under its group banner, with its exact signature and its docstring."""
    from phasetrain import hookspecs

    source = inspect.getsource(hookspecs)
    module_doc = inspect.getdoc(hookspecs) or ""
    lines = module_doc.split("::", 1)[1].splitlines()[1:]
    end = next((i for i, line in enumerate(lines) if line.strip() and not line.startswith(" ")), len(lines))
    block = textwrap.dedent("\n".join(lines[:end])).strip("\n")
    rest = "\n".join(lines[end:])
    out = [
        "# Hook reference",
        "",
        f"<!-- Generated from core/hookspecs.py by `python -m phasetrain.plugins.docgen hooks`; do not edit by hand.",
        f"     Regenerate with: {HOOKS_COMMAND} -->",
        "",
        "Every hook phasetrain fires, with its exact signature and contract, generated from",
        "`core/hookspecs.py`. Implement a hook by decorating a function or method named like it with",
        "`@phasetrain.hookimpl`; an implementation may take any subset of the arguments, and",
        "`tryfirst=True` / `trylast=True` move it to the front or back of the call order.",
        "",
        "## The protocol of one run",
        "",
        "```",
        block.rstrip(),
        "```",
        "",
        _rst_to_md(textwrap.dedent(rest).strip()),
        "",
    ]
    group = None
    banner = re.compile(r"^# -{20,}\n# (.+)\n# -{20,}\n", re.M)
    groups = [(m.start(), m.group(1)) for m in banner.finditer(source)]
    for match in re.finditer(r"^@hookspec(?:\((.*?)\))?\ndef (\w+)\(", source, re.M):
        options, name = match.group(1) or "", match.group(2)
        current = [title for start, title in groups if start < match.start()][-1]
        if current != group:
            group = current
            out += [f"# {group}", ""]
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        first = "Stops at the first non-`None` result (`firstresult`). " if "firstresult" in options else ""
        out += [f"## `{hook_signature(name)}`", ""]
        if first:
            out += [f"*{first.strip()}*", ""]
        out += [_rst_to_md(doc), ""]
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    import sys

    print(render_hooks() if sys.argv[1:] == ["hooks"] else render(), end="")


if __name__ == "__main__":
    main()
