"""The run config: attrs classes, a project-owned cattrs converter, files and ``--set`` overrides.

A config file (TOML or JSON) has a ``[run]`` table and one section per component kind::

    [run]
    steps = 2000

    [optimizer]
    use = "adam"        # the component's registered name
    lr = 3e-4           # every other key belongs to that component's own attrs config class

    [observers.console] # observers are keyed by name; several may listen at once
    every = 100

Structuring is strict: unknown keys, wrong types and out-of-range values are errors that name
the file and the dotted path of the field. Defaults live in the attrs classes only.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tomllib
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationNote,
)

from phasetrain.errors import ConfigError, UnknownComponent
from phasetrain.registry import KINDS, Registry, load_registry

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
        if value is not None and not test(value):
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


# ---------------------------------------------------------------------------------------------
# The schema
# ---------------------------------------------------------------------------------------------


def _device(_instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if value not in ("auto", "cpu", "cuda") and not value.startswith("cuda:"):
        raise FieldValueError(attribute.name, f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}")


@attrs.define
class DistributedConfig:
    """torch.distributed settings, used when launched by torchrun."""

    backend: str = attrs.field(default="auto", validator=one_of("auto", "gloo", "nccl"))  # auto: by device
    timeout_s: float = attrs.field(default=300.0, validator=positive)  # a collective waits this long
    check_every: int = attrs.field(default=0, validator=non_negative)  # >0: verify weights agree


@attrs.define
class RunConfig:
    """Settings of the run itself; every component kind has its own section besides."""

    steps: int = attrs.field(default=1000, validator=positive)  # optimizer steps in total
    seed: int = 0  # seeds python, numpy and torch before anything is built
    out_dir: str = "runs/default"  # checkpoints, metrics and logs go here
    device: str = attrs.field(default="auto", validator=_device)  # auto: cuda when available
    log_every: int = attrs.field(default=50, validator=positive)  # cadence of metric records
    eval_every: int = attrs.field(default=0, validator=non_negative)  # 0: evaluate at the end only
    checkpoint_every: int = attrs.field(default=0, validator=non_negative)  # 0: at the end only
    keep_checkpoints: int = attrs.field(default=3, validator=positive)
    grad_accum_steps: int = attrs.field(default=1, validator=positive)  # micro-batches per step
    threads: int = attrs.field(default=0, validator=non_negative)  # torch threads; 0: torch's default
    # After a non-finite loss or gradient (never applied): "skip", "rollback" or "stop".
    nonfinite: str = attrs.field(default="skip", validator=one_of("skip", "rollback", "stop"))
    nonfinite_patience: int = attrs.field(default=3, validator=positive)  # consecutive bad steps
    nonfinite_lr_factor: float = attrs.field(default=0.5, validator=in_range(1e-6, 1.0))  # rollback
    distributed: DistributedConfig = attrs.field(factory=DistributedConfig)


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
        if kind not in KINDS:
            raise ValueError(f"unknown component kind {kind!r}")
        if kind not in cls._subclasses:
            sub = type(f"{kind.title().replace('_', '')}Choice", (cls,), {"kind": kind})
            cls._subclasses[kind] = attrs.frozen(sub)
        return cls._subclasses[kind]


TaskChoice = Choice.of("task")
OptimizerChoice = Choice.of("optimizer")
LrScheduleChoice = Choice.of("lr_schedule")
ScheduleChoice = Choice.of("schedule")
DynamicsChoice = Choice.of("dynamics")
PrecisionChoice = Choice.of("precision")
OffloadChoice = Choice.of("offload")
ResidualChoice = Choice.of("residual")
SamplerChoice = Choice.of("sampler")

#: The component each section uses when a file does not choose one. ``task`` has no default;
#: ``dynamics``, ``residual`` and ``sampler`` are absent unless a file chooses them.
SECTION_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "optimizer": {"use": "adam"},
    "lr_schedule": {"use": "constant"},
    "schedule": {"use": "single"},
    "precision": {"use": "fp32"},
    "offload": {"use": "none"},
}
OBSERVER_DEFAULTS: Mapping[str, Mapping[str, Any]] = {"console": {}, "jsonl": {}}


@attrs.frozen
class Observer:
    """An observer entry: its options and whether it is switched on."""

    options: Any
    enabled: bool = True


@attrs.define
class Config:
    """A whole run: ``run`` settings plus one chosen component per kind, plus observers."""

    run: RunConfig
    task: TaskChoice
    optimizer: OptimizerChoice
    lr_schedule: LrScheduleChoice
    schedule: ScheduleChoice
    precision: PrecisionChoice
    offload: OffloadChoice
    observers: dict[str, Observer]
    dynamics: DynamicsChoice | None = None
    residual: ResidualChoice | None = None
    sampler: SamplerChoice | None = None
    source: str = attrs.field(default="", eq=False)  # file the config came from, for messages

    def section(self, kind: str) -> Choice | None:
        return getattr(self, kind)

    def to_dict(self) -> dict[str, Any]:
        return converter_for(load_registry()).unstructure(self)

    def hash(self) -> str:
        """A stable hash of the whole resolved config."""
        data = self.to_dict()
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# The converter
# ---------------------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}.get(
        type(value), f"a {type(value).__name__}"
    )


def _strict(expected: type, accepts: tuple[type, ...], label: str) -> Any:
    def structure(value: Any, _type: Any) -> Any:
        if isinstance(value, bool) and bool not in accepts:
            raise TypeError(f"expected {label}, got {_type_name(value)} {value!r}")
        if not isinstance(value, accepts):
            raise TypeError(f"expected {label}, got {_type_name(value)} {value!r}")
        return expected(value)

    return structure


def make_converter(registry: Registry) -> cattrs.Converter:
    """The project-owned converter: strict primitives, unknown keys forbidden, choices resolved
    through ``registry`` to each component's own config class."""
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(int, _strict(int, (int,), "an integer"))
    conv.register_structure_hook(float, _strict(float, (int, float), "a float"))
    conv.register_structure_hook(str, _strict(str, (str,), "a string"))
    conv.register_structure_hook(bool, _strict(bool, (bool,), "a boolean"))

    def structure_choice(data: Any, cls: type[Choice]) -> Choice:
        if isinstance(data, str):  # shorthand: optimizer = "adam"
            data = {"use": data}
        if not isinstance(data, Mapping):
            raise TypeError(f"expected a table with 'use = \"name\"', got {_type_name(data)} {data!r}")
        if "use" not in data:
            raise KeyError("use")
        name = data["use"]
        if not isinstance(name, str):
            raise TypeError(f"'use' must be a component name, got {name!r}")
        component = registry.get(cls.kind, name)
        rest = {k: v for k, v in data.items() if k != "use"}
        return cls(name, conv.structure(rest, component.config))

    def unstructure_choice(choice: Choice) -> dict[str, Any]:
        return {"use": choice.use, **conv.unstructure(choice.options)}

    conv.register_structure_hook_func(
        lambda t: isinstance(t, type) and issubclass(t, Choice), structure_choice
    )
    conv.register_unstructure_hook_func(
        lambda t: isinstance(t, type) and issubclass(t, Choice), unstructure_choice
    )

    def structure_observers(data: Any, _type: Any) -> dict[str, Observer]:
        if not isinstance(data, Mapping):
            raise TypeError(f"expected a table of observers, got {_type_name(data)} {data!r}")
        out: dict[str, Observer] = {}
        errors = []
        for name, options in data.items():
            try:
                options = dict(options)
                enabled = options.pop("enabled", True)
                if not isinstance(enabled, bool):
                    raise TypeError(f"'enabled' must be true or false, got {enabled!r}")
                component = registry.get("observer", name)
                out[name] = Observer(conv.structure(options, component.config), enabled)
            except Exception as exc:  # gathered with the observer's name as path
                exc.__notes__ = [AttributeValidationNote(f"observer {name}", name, Any)]
                errors.append(exc)
        if errors:
            raise ClassValidationError("While structuring observers", errors, dict)
        return out

    def unstructure_observers(observers: Mapping[str, Observer]) -> dict[str, Any]:
        out = {}
        for name, obs in observers.items():
            entry = conv.unstructure(obs.options)
            if not obs.enabled:
                entry["enabled"] = False
            out[name] = entry
        return out

    conv.register_structure_hook_func(lambda t: t == dict[str, Observer], structure_observers)
    conv.register_unstructure_hook_func(lambda t: t == dict[str, Observer], unstructure_observers)

    base_unstructure_config = conv.get_unstructure_hook(Config)
    conv.register_unstructure_hook(
        Config, lambda c: {k: v for k, v in base_unstructure_config(c).items() if k != "source"}
    )
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
            import difflib

            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            allowed = ", ".join(known) if known else "none"
            yield (f"{path}.{key}" if path else key), f"unknown key (allowed here: {allowed}){hint}"
    elif isinstance(exc, FieldValueError):
        yield (f"{path}.{exc.field}" if path else exc.field), str(exc)
    elif isinstance(exc, KeyError):
        yield path, "is required but missing"
    elif isinstance(exc, UnknownComponent):
        yield path, str(exc)
    else:
        yield path, str(exc)


def _origin(path: str, origins: Mapping[str, str], default: str) -> str:
    """Where the value at ``path`` came from: the ``--set`` that wrote it or under it, or the file."""
    for key, origin in origins.items():
        if path == key or path.startswith(key + ".") or key.startswith(path + "."):
            return origin
    return default


def _config_error(exc: BaseException, origins: Mapping[str, str], default_source: str) -> ConfigError:
    leaves = list(_leaves(exc, ""))
    path, message = leaves[0] if leaves else ("", str(exc))
    source = _origin(path, origins, default_source)
    more = f" (and {len(leaves) - 1} more)" if len(leaves) > 1 else ""
    return ConfigError(source, path, message + more)


# ---------------------------------------------------------------------------------------------
# Files, presets and overrides
# ---------------------------------------------------------------------------------------------


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
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
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word such as adam
    return parts, value


def read_file(path: Path) -> dict[str, Any]:
    """Read a TOML or JSON config file; a syntax error names the file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(str(path), "", f"not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", "expected a table at the top level")
    return data


def resolve_source(name_or_path: str, registry: Registry) -> tuple[str, dict[str, Any]]:
    """A preset name or a file path → (label for messages, raw data)."""
    path = Path(name_or_path)
    if path.suffix in (".toml", ".json") or path.exists():
        if not path.exists():
            raise ConfigError(str(path), "", "no such file")
        return str(path), read_file(path)
    presets = registry.presets()
    if name_or_path not in presets:
        raise UnknownComponent("preset", name_or_path, presets)
    resource, _info = presets[name_or_path]
    text = resource.read_text() if hasattr(resource, "read_text") else Path(resource).read_text()
    label = f"preset {name_or_path}"
    try:
        return label, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(label, "", f"not valid TOML: {exc}") from None


def build(
    data: Mapping[str, Any],
    *,
    overrides: Iterable[str] = (),
    source: str = "<dict>",
    registry: Registry | None = None,
) -> Config:
    """Structure raw data (plus ``--set`` overrides) into a validated :class:`Config`."""
    registry = registry or load_registry()
    raw: dict[str, Any] = {"run": {}}
    for kind, default in SECTION_DEFAULTS.items():
        raw[kind] = dict(default)
    raw["observers"] = copy.deepcopy(dict(OBSERVER_DEFAULTS))
    # A file that chooses another component drops the default's options, keeps its own.
    raw = _deep_merge(raw, {k: v for k, v in data.items() if k not in SECTION_DEFAULTS})
    for kind in SECTION_DEFAULTS.keys() & data.keys():
        raw[kind] = copy.deepcopy(data[kind])
    origins: dict[str, str] = {}
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
        origins[".".join(parts)] = f"--set {text}"
    sections = {a.name for a in attrs.fields(Config)} - {"source"}
    unknown = sorted(set(raw) - sections)
    if unknown:
        allowed = ", ".join(a.name for a in attrs.fields(Config) if a.name != "source")
        raise ConfigError(
            _origin(unknown[0], origins, source), unknown[0], f"unknown section (sections: {allowed})"
        )
    if "task" not in raw:
        raise ConfigError(source, "task", "is required: choose a task, e.g. [task] use = \"regression\"")
    conv = converter_for(registry)
    try:
        config = conv.structure(raw, Config)
    except ClassValidationError as exc:
        raise _config_error(exc, origins, source) from None
    except (UnknownComponent, TypeError, ValueError, KeyError) as exc:
        raise _config_error(exc, origins, source) from None
    config.source = source
    return config


def load(
    name_or_path: str | Path, overrides: Iterable[str] = (), registry: Registry | None = None
) -> Config:
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
    if isinstance(value, (list, tuple)):
        return [_drop_none(v) for v in value]
    return value


#: Keys that may change between a run and its resume: bookkeeping, not the training itself.
RESUMABLE_CHANGES = (
    "run.steps",
    "run.out_dir",
    "run.device",
    "run.log_every",
    "run.eval_every",
    "run.checkpoint_every",
    "run.keep_checkpoints",
    "run.threads",
    "run.nonfinite",
    "run.nonfinite_patience",
    "run.nonfinite_lr_factor",
    "run.distributed",
    "observers",
)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def incompatible_keys(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two unstructured configs, bookkeeping aside."""
    a = _flatten(json.loads(json.dumps(saved)))
    b = _flatten(json.loads(json.dumps(current)))
    differing = []
    for key in sorted(a.keys() | b.keys()):
        if any(key == k or key.startswith(k + ".") for k in RESUMABLE_CHANGES):
            continue
        if a.get(key) != b.get(key):
            differing.append(key)
    return differing
