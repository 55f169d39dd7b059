"""The run config: attrs classes, a project-owned cattrs converter, files and ``--set`` overrides.

A config file (TOML or JSON) has a ``[run]`` table and one section per kind the installed
plugins declare (``phasetrain kinds`` lists them)::

    [run]
    steps = 2000

    [optimizer]
    use = "adam"        # the component's registered name
    lr = 3e-4           # every other key belongs to that component's own attrs config class

    [observers.console] # a kind declared with many=True: a table of components keyed by name
    every = 100

Structuring is strict: unknown keys, wrong types and out-of-range values are errors that name
the file and the dotted path of the field. Defaults live in the attrs classes only; a section a
file leaves out gets its kind's default component (or, for a kind with many, every component
marked default), or none.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
import tomllib
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, NewType, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import AttributeValidationNote, ClassValidationError, ForbiddenExtraKeysError, IterableValidationNote

from phasetrain.errors import ConfigError, UnknownComponent
from phasetrain.registry import Registry, load_registry

# ---------------------------------------------------------------------------------------------
# Validators for component config classes: they name the field, so errors carry its path
# ---------------------------------------------------------------------------------------------


class FieldValueError(ValueError):
    """A value of the right type outside its allowed range."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


def _check(test: Any, describe: str, **allows: Any) -> Any:
    def validator(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is not None and not (test(value) and (not isinstance(value, float) or abs(value) < float("inf"))):
            raise FieldValueError(attribute.name, f"must be {describe}, got {value!r}")

    # What the check lets through (``low``/``high``, inclusive unless ``low_open``, or
    # ``choices``), so that tools can generate valid values (phasetrain.testing.strategies).
    validator.allows = allows  # type: ignore[attr-defined]
    return validator


positive = _check(lambda v: v > 0, "> 0", low=0, low_open=True)
non_negative = _check(lambda v: v >= 0, ">= 0", low=0)
probability = _check(lambda v: 0 <= v <= 1, "between 0 and 1", low=0, high=1)


def at_least(bound: float) -> Any:
    return _check(lambda v: v >= bound, f">= {bound}", low=bound)


def in_range(low: float, high: float) -> Any:
    return _check(lambda v: low <= v <= high, f"between {low} and {high}", low=low, high=high)


def one_of(*choices: Any) -> Any:
    return _check(lambda v: v in choices, "one of " + ", ".join(repr(c) for c in choices), choices=choices)


#: The type of a float field that may be infinite (``inf`` in TOML); every other float must be finite.
FloatOrInf = NewType("FloatOrInf", float)


def resumable(**kwargs: Any) -> Any:
    """An ``attrs.field`` that may change when a run resumes (bookkeeping, not training)."""
    return attrs.field(metadata={"resumable": True}, **kwargs)


# ---------------------------------------------------------------------------------------------
# The schema
# ---------------------------------------------------------------------------------------------


def _device(_instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if value not in ("auto", "cpu", "cuda") and not (value[:5] == "cuda:" and value[5:].isascii() and value[5:].isdigit()):
        raise FieldValueError(attribute.name, f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}")


@attrs.define
class RunConfig:
    """Settings of the run itself; every kind of component has its own section besides."""

    steps: int = resumable(default=1000, validator=positive)  # steps in total
    seed: int = attrs.field(default=0, validator=in_range(0, 2**63 - 1))  # seeds python, numpy and torch first
    out_dir: str = resumable(default="runs/default/{version}")  # the run's files; {version}: a new version_N per run
    device: str = resumable(default="auto", validator=_device)  # auto: cuda when available
    log_every: int = resumable(default=50, validator=positive)  # cadence of metric records
    eval_every: int = resumable(default=0, validator=non_negative)  # 0: evaluate at the end only
    checkpoint_every: int = resumable(default=0, validator=non_negative)  # 0: at the end only
    keep_checkpoints: int = resumable(default=3, validator=positive)
    grad_accum_steps: int = attrs.field(default=1, validator=in_range(1, 2**16))  # micro-batches per step
    threads: int = resumable(default=0, validator=in_range(0, 1024))  # torch threads; 0: torch's default


#: Keys of earlier versions, with where they went (a config that uses one is told).
MOVED = {
    "run.nonfinite": '[nonfinite] use = "skip" | "rollback" | "stop"',
    "run.nonfinite_patience": "[nonfinite] patience",
    "run.nonfinite_lr_factor": '[nonfinite] use = "rollback", lr_factor',
    "run.distributed": '[strategy] (use = "ddp", backend, timeout_s, check_every)',
}


@attrs.frozen
class Choice:
    """A config section: the chosen component's name and its structured options."""

    use: str
    options: Any = attrs.field(factory=lambda: None)

    kind: ClassVar[str] = ""
    _subclasses: ClassVar[dict[str, type[Choice]]] = {}

    @classmethod
    def of(cls, kind: str) -> type[Choice]:
        """The Choice type for ``kind``: use it as a field type in a component's config class to
        let users pick a nested component (for example a stage's own optimizer)."""
        if kind not in cls._subclasses:
            cls._subclasses[kind] = attrs.frozen(type(f"{kind.title().replace('_', '')}Choice", (cls,), {"kind": kind}))
        return cls._subclasses[kind]


def __getattr__(name: str) -> type[Choice]:  # OptimizerChoice, PrecisionChoice, ... for any kind
    if name.endswith("Choice") and len(name) > 6:
        return Choice.of("".join(f"_{c.lower()}" if c.isupper() else c for c in name[:-6]).lstrip("_"))
    raise AttributeError(f"module 'phasetrain.config' has no attribute {name!r}")


@attrs.frozen
class Observer:
    """An entry of a kind with many components (``[observers.NAME]``): options and whether it is on."""

    options: Any
    enabled: bool = True


@attrs.define
class Config:
    """A whole run: ``run`` settings plus, per section, the chosen component (or a table of them).

    Sections are reached as attributes (``config.optimizer``) or with :meth:`section`; a kind the
    config does not use is ``None``.
    """

    run: RunConfig
    sections: dict[str, Any] = attrs.field(factory=dict)
    source: str = attrs.field(default="", eq=False)  # file the config came from, for messages
    registry: Registry | None = attrs.field(default=None, eq=False, repr=False)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("run", "sections", "source", "registry"):
            raise AttributeError(name)
        if name in self.sections or any(k.key == name for k in self._registry().kinds.values()):
            return self.sections.get(name)
        raise AttributeError(f"the config has no section {name!r}")

    def _registry(self) -> Registry:
        return self.registry or load_registry()

    def section(self, kind: str) -> Any:
        """The section of ``kind`` (by kind name or section name), or ``None``."""
        found = self._registry().kinds.get(kind)
        return self.sections.get(found.key if found else kind)

    def to_dict(self) -> dict[str, Any]:
        return converter_for(self._registry()).unstructure(self)

    def hash(self) -> str:
        """A stable hash of the whole resolved config."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# The converter
# ---------------------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    return names.get(type(value), f"a {type(value).__name__}")


def _strict(expected: type, accepts: tuple[type, ...], label: str, fits: Any = None) -> Any:
    def structure(value: Any, _type: Any) -> Any:
        if (isinstance(value, bool) and bool not in accepts) or not isinstance(value, accepts):
            raise TypeError(f"expected {label}, got {_type_name(value)} {value!r}")
        if fits and not fits[0](value):  # a number that no tensor, seed or size can hold
            raise ValueError(f"must be {fits[1]}, got {value!r}")
        return expected(value)

    return structure


def _table(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a table, got {_type_name(value)} {value!r}")
    return value


def _noted(exc: Exception, name: str) -> Exception:
    exc.__notes__ = [AttributeValidationNote(name, name, Any)]
    return exc


def _gathered(items: Iterable[tuple[str, Any]], structure: Any, what: str, cls: type) -> dict[str, Any]:
    """``structure(name, value)`` for each item; every failure is kept, with its name as path."""
    out, errors = {}, []
    for name, value in items:
        try:
            out[name] = structure(name, value)
        except Exception as exc:
            errors.append(_noted(exc, name))
    if errors:
        raise ClassValidationError(f"While structuring {what}", errors, cls)
    return out


def make_converter(registry: Registry) -> cattrs.Converter:
    """The project-owned converter: strict primitives, unknown keys forbidden, sections typed
    from ``registry``'s kinds and each choice structured into its component's config class."""
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    # Numbers must fit where they go: integers in 64 bits (sizes, seeds, tensors), floats in float32
    # (they end up in tensors), so no float is infinite or NaN unless its field is a FloatOrInf.
    fits = {int: (lambda v: -2**63 <= v < 2**63, "between -2**63 and 2**63 - 1 (64 bits)"), FloatOrInf: (lambda v: v == v, "a number"),
            float: (lambda v: abs(v) <= 3.4e38, "finite and within float32's range (|x| <= 3.4e38)")}
    for kind, accepts, label in ((int, (int,), "an integer"), (float, (int, float), "a float"), (FloatOrInf, (int, float), "a float"),
                                 (str, (str,), "a string"), (bool, (bool,), "a boolean")):
        conv.register_structure_hook(kind, _strict(float if kind is FloatOrInf else kind, accepts, label, fits.get(kind)))
    tables = functools.cache(conv.gen_structure_attrs_fromdict)  # cattrs' message for a non-table is about Python
    conv.register_structure_hook_func(attrs.has, lambda value, cls: tables(cls)(_table(value), cls))

    def structure_array(value: Any, cls: Any) -> Any:  # a TOML array, not a string's characters; a tuple at its length
        args, is_tuple = get_args(cls), get_origin(cls) is tuple
        size = len(args) if is_tuple and Ellipsis not in args else None
        if not isinstance(value, (list, tuple)) or size not in (None, len(value)):
            raise TypeError(f"expected an array{f' of {size} values' if size else ''}, got {_type_name(value)} {value!r}")
        return conv._structure_tuple(value, cls) if is_tuple else list(conv._structure_tuple(value, tuple[(*args, ...)]))

    conv.register_structure_hook_func(lambda t: get_origin(t) in (list, tuple), structure_array)

    def structure_choice(data: Any, cls: type[Choice]) -> Choice:
        data = {"use": data} if isinstance(data, str) else data  # shorthand: optimizer = "adam"
        if not isinstance(data, Mapping):
            raise TypeError(f"expected a table with 'use = \"name\"', got {_type_name(data)} {data!r}")
        if "use" not in data:
            raise FieldValueError("use", 'is required: choose a component with use = "name"')
        if not isinstance(name := data["use"], str):
            raise TypeError(f"'use' must be a component name, got {name!r}")
        return cls(name, conv.structure({k: v for k, v in data.items() if k != "use"}, registry.get(cls.kind, name).config))

    is_choice = lambda t: isinstance(t, type) and issubclass(t, Choice)  # noqa: E731
    conv.register_structure_hook_func(is_choice, structure_choice)
    conv.register_unstructure_hook_func(is_choice, lambda c: {"use": c.use, **(conv.unstructure(c.options) or {})})

    def structure_entry(kind: str, name: str, options: Any) -> Observer:
        options = dict(_table(options))
        if not isinstance(enabled := options.pop("enabled", True), bool):
            raise TypeError(f"'enabled' must be true or false, got {enabled!r}")
        return Observer(conv.structure(options, registry.get(kind, name).config), enabled)

    def structure_section(key: str, value: Any) -> Any:
        kind = next(k for k in registry.kinds.values() if k.key == key)
        if not kind.many:
            return conv.structure(value, Choice.of(kind.name))
        return _gathered(_table(value).items(), lambda n, v: structure_entry(kind.name, n, v), "a table", dict)

    def structure_config(data: Mapping[str, Any], _cls: type) -> Config:
        parts = _gathered(data.items(), lambda k, v: conv.structure(v, RunConfig) if k == "run" else structure_section(k, v),
                          "the config", Config)
        return Config(parts.pop("run"), parts, registry=registry)

    def unstructure_config(config: Config) -> dict[str, Any]:
        out: dict[str, Any] = {"run": conv.unstructure(config.run)}
        for key, value in config.sections.items():
            if isinstance(value, dict):
                out[key] = {n: {**(conv.unstructure(o.options) or {}), **({} if o.enabled else {"enabled": False})}
                            for n, o in value.items()}
            elif value is not None:
                out[key] = conv.unstructure(value, Choice)
        return out

    conv.register_structure_hook(Config, structure_config)
    conv.register_unstructure_hook(Config, unstructure_config)
    return conv


_converters: weakref.WeakKeyDictionary[Registry, cattrs.Converter] = weakref.WeakKeyDictionary()


def converter_for(registry: Registry) -> cattrs.Converter:
    if registry not in _converters:
        _converters[registry] = make_converter(registry)
    return _converters[registry]


# ---------------------------------------------------------------------------------------------
# Errors: walk cattrs' exception groups into "path: message"
# ---------------------------------------------------------------------------------------------


def _leaves(exc: BaseException, path: str) -> Iterable[tuple[str, str]]:
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            sub_path = path
            for note in getattr(sub, "__notes__", ()):
                if isinstance(note, AttributeValidationNote):
                    sub_path = f"{path}.{note.name}" if path else note.name
                elif isinstance(note, IterableValidationNote):
                    sub_path = f"{path}[{note.index}]"
            yield from _leaves(sub, sub_path)
    elif isinstance(exc, ForbiddenExtraKeysError):
        known = [a.name for a in attrs.fields(exc.cl)] if attrs.has(exc.cl) else []
        for key in sorted(exc.extra_fields):
            full = f"{path}.{key}" if path else key
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            moved = f"has moved: use {MOVED[full]} (see CHANGELOG.md)" if full in MOVED else ""
            yield full, moved or f"unknown key (allowed here: {', '.join(known) or 'none'}){hint}"
    elif isinstance(exc, FieldValueError):
        yield (f"{path}.{exc.field}" if path else exc.field), str(exc)
    else:
        yield path, "is required but missing" if isinstance(exc, KeyError) else str(exc)


def _origin(path: str, origins: Mapping[str, str], default: str) -> str:
    """Where the value at ``path`` came from: the last ``--set`` that wrote it or under it, or the file."""
    path = path.split("[")[0]  # an element of an array comes from where the array came from
    found = (o for k, o in reversed(origins.items()) if path == k or path.startswith(k + ".") or k.startswith(path + "."))
    return next(found, default)


def _config_error(exc: BaseException, origins: Mapping[str, str], default_source: str) -> ConfigError:
    leaves = list(_leaves(exc, ""))
    path, message = leaves[0] if leaves else ("", str(exc))
    more = f" (and {len(leaves) - 1} more)" if len(leaves) > 1 else ""
    return ConfigError(_origin(path, origins, default_source), path, message + more)


# ---------------------------------------------------------------------------------------------
# Files, presets and overrides
# ---------------------------------------------------------------------------------------------


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        both = isinstance(value, Mapping) and isinstance(out.get(key), dict)
        out[key] = _deep_merge(out[key], value) if both else copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` → (["a", "b"], value), the value read as TOML (bare words stay strings)."""
    if "=" not in text:
        raise ConfigError("--set", text, "expected key=value, e.g. --set optimizer.lr=1e-3")
    key, raw = text.split("=", 1)
    parts = [p.strip() for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError("--set", key, "expected a dotted key such as optimizer.lr")
    try:
        return parts, tomllib.loads(f"v = {raw}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
        return parts, raw  # a bare word such as adam


def read_file(path: Path) -> dict[str, Any]:
    """Read a TOML or JSON config file; a syntax error names the file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    try:  # not UTF-8 or nested too deeply is not valid either
        data = json.loads(raw.decode()) if path.suffix == ".json" else tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:
        raise ConfigError(str(path), "", f"not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", "expected a table at the top level")
    return data


def resolve_source(name_or_path: str, registry: Registry) -> tuple[str, dict[str, Any]]:
    """A preset name or a file path → (label for messages, raw data)."""
    path = Path(name_or_path)
    if path.suffix in (".toml", ".json") or (path.exists() and not path.is_dir()):  # a directory may share a preset's name
        if not path.is_file():  # a FIFO or a device would never end
            raise ConfigError(str(path), "", "not a regular file" if path.exists() else "no such file")
        return str(path), read_file(path)
    presets = registry.presets()
    if name_or_path not in presets:
        raise UnknownComponent("preset", name_or_path, presets)
    resource, label = presets[name_or_path][0], f"preset {name_or_path}"
    try:
        return label, tomllib.loads(resource.read_text() if hasattr(resource, "read_text") else Path(resource).read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(label, "", f"not valid TOML: {exc}") from None


def build(data: Mapping[str, Any], *, overrides: Iterable[str] = (), source: str = "<dict>",
          registry: Registry | None = None) -> Config:
    """Structure raw data (plus ``--set`` overrides) into a validated :class:`Config`."""
    registry = registry or load_registry()
    kinds = {k.key: k for k in registry.kinds.values()}
    raw: dict[str, Any] = {"run": {}}
    for key, kind in kinds.items():
        if kind.many:
            raw[key] = {name: {} for name in registry.defaults(kind.name)}
        elif registry.defaults(kind.name):
            raw[key] = {"use": registry.defaults(kind.name)[0]}
    origins: dict[str, str] = {}
    try:  # a value nested too deeply to copy is refused too (RecursionError)
        # A file that chooses another component drops the default's options, keeps its own.
        single = {k for k, kind in kinds.items() if not kind.many}
        raw = _deep_merge(raw, {k: v for k, v in data.items() if k not in single})
        raw.update({key: copy.deepcopy(data[key]) for key in single & data.keys()})
        for text in overrides:
            parts, value = parse_override(text)
            node = raw
            for depth, part in enumerate(parts[:-1]):
                if (child := node.get(part)) is not None and not isinstance(child, dict):
                    raise ConfigError(f"--set {text}", ".".join(parts[: depth + 1]), f"is {_type_name(child)} {child!r}, not a table")
                node = node.setdefault(part, {}) if child is None else child
            node[parts[-1]] = value
            origins[".".join(parts)] = f"--set {text}"
        if unknown := sorted(set(raw) - set(kinds) - {"run"}):
            raise ConfigError(_origin(unknown[0], origins, source), unknown[0],
                              f"unknown section (sections: run, {', '.join(sorted(kinds))})")
        for key, kind in kinds.items():
            if kind.required and key not in raw:
                example = (registry.names(kind.name) or ["NAME"])[0]
                raise ConfigError(source, key, f'is required: choose one, e.g. [{key}] use = "{example}"')
        config = converter_for(registry).structure(raw, Config)
    except (ClassValidationError, UnknownComponent, TypeError, ValueError, KeyError, RecursionError) as exc:
        raise _config_error(exc, origins, source) from None
    config.source = source
    return config


def load(name_or_path: str | Path, overrides: Iterable[str] = (), registry: Registry | None = None) -> Config:
    """Load a preset name or a TOML/JSON file, apply ``--set`` overrides, validate."""
    registry = registry or load_registry()
    label, data = resolve_source(str(name_or_path), registry)
    return build(data, overrides=overrides, source=label, registry=registry)


def to_toml(config: Config) -> str:
    """The fully resolved config as TOML (what ``phasetrain config`` prints)."""
    import tomli_w

    return tomli_w.dumps(_drop_none(config.to_dict()))


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return [_drop_none(v) for v in value] if isinstance(value, (list, tuple)) else value


def resumable_keys(config: Config) -> list[str]:
    """Dotted keys that may change between a run and its resume (field metadata and kinds)."""
    keys = [f"run.{a.name}" for a in attrs.fields(RunConfig) if a.metadata.get("resumable")]
    keys += [k.key for k in config._registry().kinds.values() if k.resumable]
    for key, choice in config.sections.items():
        if isinstance(choice, Choice) and attrs.has(type(choice.options)):
            keys += [f"{key}.{a.name}" for a in attrs.fields(type(choice.options)) if a.metadata.get("resumable")]
    return keys


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, Mapping):
        return {prefix: data}
    return {k: v for key, value in data.items() for k, v in _flatten(value, f"{prefix}.{key}" if prefix else str(key)).items()}


def incompatible_keys(saved: Mapping[str, Any], current: Config) -> list[str]:
    """Dotted keys whose values differ between a saved config and ``current``, bookkeeping aside."""
    a, b = _flatten(json.loads(json.dumps(saved))), _flatten(json.loads(json.dumps(current.to_dict())))
    free = resumable_keys(current)
    return [key for key in sorted(a.keys() | b.keys())
            if not any(key == k or key.startswith(k + ".") for k in free) and a.get(key) != b.get(key)]
