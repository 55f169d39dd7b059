"""Where contracts run: the settings of a check, the component under test (:class:`Subject`) and
the small, real runs it is built in.

A contract builds components exactly the way a run does: a config is structured by
``phasetrain.config.build`` and handed to a real :class:`phasetrain.Trainer`, whose
``BuildContext`` every factory receives. The default context is the ``regression`` task (a tiny
MLP) with a ``constant`` learning rate and the component in its own section; a kind that needs
more (a PINN task for residuals, a hybrid schedule for dynamics models, a staged schedule with a
phase that takes no optimizer step for offload strategies) declares its context with
:func:`phasetrain.testing.contract.context` in the module that holds its contracts.

``context=`` replaces any section of the run (``context={"residual": "burgers"}``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from phasetrain import hookimpl
from phasetrain import registry as registry_mod
from phasetrain.errors import BadInput
from phasetrain.testing.bits import VOLATILE
from phasetrain.testing.violation import ContractViolation

REGRESSION = {"use": "regression", "in_dim": 4, "hidden": 8, "depth": 1, "n_train": 64, "n_eval": 32, "batch_size": 16}
QUIET = {"console": {"enabled": False}, "jsonl": {"enabled": False}}


def _positive_even(_instance: Any, attribute: attrs.Attribute, value: int) -> None:
    if value < 2 or value % 2:
        raise BadInput(f"phasetrain.testing: {attribute.name} must be an even number >= 2, got {value!r}")


@attrs.define(kw_only=True)
class Settings:
    """How a contract check runs; every keyword of :func:`phasetrain.testing.check_component`."""

    examples: int | None = None  # hypothesis examples per contract; None: each contract's own
    options: Mapping[str, Any] = attrs.field(factory=dict)  # option values fixed on top of the drawn ones
    context: Mapping[str, Any] = attrs.field(factory=dict)  # config sections replacing the kit's context
    device: str = "cpu"  # run.device of every run ("cuda" checks device placement for real)
    steps: int = attrs.field(default=6, validator=_positive_even)  # length of the short runs
    plugins: Sequence[Any] = ()  # plugin objects providing components that are not installed
    volatile: frozenset[str] = VOLATILE  # state keys holding clock readings, never compared
    phase: str | None = None  # offload: the phase to offload in (default: options.phases[0] or "predict")
    derandomize: bool = False  # hypothesis: the same examples on every run

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> Settings:
        known = {a.name for a in attrs.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise BadInput(
                f"phasetrain.testing: unknown setting {unknown[0]!r} (settings: {', '.join(sorted(known))})"
            )
        return cls(**values)


def _plugin_info(obj: Any, index: int) -> registry_mod.PluginInfo:
    if isinstance(obj, registry_mod.PluginInfo):
        return obj
    name = getattr(obj, "__name__", None) or f"{type(obj).__name__}-{index}"
    return registry_mod.plugin(obj, name, distribution="not installed")


#: Registries with extra plugins, kept for the process: the config converter cache is keyed by
#: a registry's id, which a collected registry would hand on to the next one.
_REGISTRIES: dict[tuple[Any, ...], tuple[tuple[Any, ...], registry_mod.Registry]] = {}


def registry_with(plugins: Sequence[Any]) -> registry_mod.Registry:
    """The installed plugins plus ``plugins`` (built once per set of plugin objects)."""
    import os

    if not plugins:
        return registry_mod.load_registry()
    key = (os.environ.get(registry_mod.AUTOLOAD_ENV, ""), *(id(p) for p in plugins))
    if key not in _REGISTRIES:
        extra = [_plugin_info(p, i) for i, p in enumerate(plugins)]
        _REGISTRIES[key] = (tuple(plugins), registry_mod.load_registry(extra))
    return _REGISTRIES[key][1]


class Subject:
    """One component under test: its registry entry, the settings, and how to build it."""

    def __init__(self, kind: str, name: str, settings: Settings, registry: registry_mod.Registry | None = None):
        from phasetrain import config as config_mod

        self.kind, self.name, self.settings = kind, name, settings
        self.registry = registry or registry_with(settings.plugins)
        self.component = self.registry.get(kind, name)  # UnknownComponent lists what is installed
        self.origin = self.registry.origin(kind, name)
        self.converter = config_mod.converter_for(self.registry)
        self.contract = "component"  # the contract running now, for messages
        self.pinned = False  # draw only the default options (the runner's first example)
        self._root: Path | None = None
        self._runs = 0
        self._context: Any = None
        self.default_options()  # settings.options that do not fit are the caller's mistake: say so now

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name!r} ({self.origin.distribution})"

    def fail(self, message: str) -> None:
        raise ContractViolation(self.contract, f"{self.label}: {message}")

    # -- options -----------------------------------------------------------------------------

    @property
    def options_class(self) -> type:
        return self.component.config

    def options(self, small: bool = False) -> Any:
        """Strategy of valid options (with ``settings.options`` fixed on top)."""
        from hypothesis import strategies as st

        from phasetrain.testing import strategies

        from phasetrain.testing.contract import CONTEXTS

        drawn = (st.just(self.default_options()) if self.pinned else
                 strategies.options(self.options_class, registry=self.registry, small=small).map(self.fixed))
        narrow = CONTEXTS[self.kind].small if self.kind in CONTEXTS else None
        return narrow(self, drawn) if small and narrow is not None else drawn

    def default_options(self) -> Any:
        return self.fixed(self.options_class())

    def fixed(self, options: Any) -> Any:
        if not self.settings.options:
            return options
        data = {**self.unstructure(options), **self.settings.options}
        try:
            return self.converter.structure(data, self.options_class)
        except Exception as exc:
            raise BadInput(f"phasetrain.testing: options={dict(self.settings.options)!r} do not fit "
                           f"{self.options_class.__name__}: {exc}") from None

    def unstructure(self, options: Any) -> dict[str, Any]:
        return dict(self.converter.unstructure(options, self.options_class) or {})

    # -- configs and trainers -----------------------------------------------------------------

    def hooks(self, options: Any) -> list[Any]:
        """Plugins the kind's context needs (an offload context's phase without optimizer steps)."""
        from phasetrain.testing.contract import CONTEXTS

        found = CONTEXTS.get(self.kind)
        return list(found.hooks(self, options)) if found is not None and found.hooks is not None else []

    def raw(self, options: Any, *, steps: int | None = None, out_dir: str = "", seed: int = 0,
            run: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The run config (raw, as a file would hold it) with the component in its section."""
        from phasetrain.testing.contract import CONTEXTS

        section = self.unstructure(options)
        raw: dict[str, Any] = {
            "run": {"steps": steps or self.settings.steps, "seed": seed, "out_dir": out_dir or "unused",
                    "device": self.settings.device, **(run or {})},
            "task": dict(REGRESSION),
            "lr_schedule": {"use": "constant"},
            "observers": copy.deepcopy(QUIET),
        }
        spec = self.registry.kinds[self.kind]
        if spec.many:
            raw.setdefault(spec.key, {})[self.name] = section
        else:
            raw[spec.key] = {"use": self.name, **section}
        if self.kind in CONTEXTS:
            CONTEXTS[self.kind].adjust(self, options, raw)
        for key, value in self.settings.context.items():
            if key in ("run", "observers") and isinstance(value, Mapping):
                raw[key] = {**raw[key], **copy.deepcopy(dict(value))}
            else:
                raw[key] = copy.deepcopy(value)
        return raw

    def config(self, raw: Mapping[str, Any]) -> Any:
        from phasetrain import config as config_mod

        source = f"the {self.contract} context of {self.kind} {self.name!r}"
        try:
            return config_mod.build(raw, registry=self.registry, source=source)
        except BadInput as exc:
            self.fail(f"the config loader refused options that the options class accepts: {exc}")

    def trainer(self, options: Any, *, steps: int | None = None, out_dir: str | None = None, seed: int = 0,
                run: Mapping[str, Any] | None = None, hooks: Iterable[Any] = (), default: bool | None = None) -> Any:
        """A Trainer with the component configured; drawn options it refuses with a BadInput are
        rejected as an example (the defaults must build)."""
        from phasetrain.loop import Trainer

        config = self.config(self.raw(options, steps=steps, out_dir=out_dir or self.run_dir(), seed=seed, run=run))
        with self._building(options, default):
            return Trainer(config, registry=self.registry, plugins=[*self.hooks(options), *hooks])

    @contextlib.contextmanager
    def _building(self, options: Any, default: bool | None = None) -> Iterator[None]:
        """Building with ``options``: a BadInput rejects drawn options (the defaults must build);
        any other error is a broken promise, since the options class accepted them."""
        from hypothesis.errors import HypothesisException

        from phasetrain.errors import PhasetrainError

        try:
            with self._refusals(options, default):
                yield
        except (ContractViolation, HypothesisException):
            raise
        except Exception as exc:
            # The Trainer wraps a factory's own exception in a PhasetrainError: show the original.
            cause = exc.__cause__ if isinstance(exc, PhasetrainError) and exc.__cause__ else exc
            self.fail(f"options {options!r} pass the options class's validators but building raised "
                      f"{type(cause).__name__}: {cause}; refuse them with a validator or a "
                      "phasetrain.errors.BadInput that says why")

    def fit(self, trainer: Any, options: Any) -> Any:
        """``trainer.fit()``; a BadInput (a check at ``train_start``, say) rejects drawn options
        the way a refused build does, and fails the defaults."""
        with self._refusals(options):
            return trainer.fit()

    @contextlib.contextmanager
    def _refusals(self, options: Any, default: bool | None = None) -> Iterator[None]:
        from hypothesis import reject

        try:
            yield
        except BadInput as exc:
            is_default = default if default is not None else options == self.default_options()
            if is_default:
                self.fail(f"refused its default options: {exc}")
            reject()

    def context_trainer(self) -> Any:
        """A Trainer with the default options, built once per contract run: the BuildContext for
        contracts that build the component from its factory with drawn options."""
        if self._context is None:
            self._context = self.trainer(self.default_options(), default=True)
        return self._context

    def built(self, trainer: Any) -> Any:
        """The component object inside ``trainer``."""
        if self.kind == "optimizer":
            return trainer.optimizers.get("main")
        found = trainer.component(self.kind)
        return found.get(self.name) if self.registry.kinds[self.kind].many else found

    def rebuild(self, trainer: Any, options: Any, **extra: Any) -> Any:
        """A second, independent object from the component's factory, in ``trainer``'s context."""
        from phasetrain.loop import BuildContext

        with self._building(options):
            return self.component.factory(options, BuildContext(trainer, **extra))

    # -- directories ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def workdir(self) -> Iterator[Path]:
        """A temporary directory for the runs of one contract, removed afterwards."""
        root = Path(tempfile.mkdtemp(prefix="phasetrain-contract-"))
        self._root, self._runs, self._context = root, 0, None
        try:
            yield root
        finally:
            self._root, self._context = None, None
            shutil.rmtree(root, ignore_errors=True)

    def run_dir(self) -> str:
        if self._root is None:  # outside a contract run: a directory that lives with the process
            self._root = Path(tempfile.mkdtemp(prefix="phasetrain-contract-"))
        self._runs += 1
        return str(self._root / f"run-{self._runs}")


def short_run(
    source: Any = "regression",
    overrides: Iterable[str] = (),
    *,
    out_dir: str | Path,
    steps: int = 4,
    plugins: Iterable[Any] = (),
    device: str | None = None,
    fit: bool = True,
) -> Any:
    """Train ``source`` (a preset, a file, a mapping or a Config) for ``steps`` steps in
    ``out_dir``, quietly, and return the Trainer (its ``outcome`` set when ``fit``)."""
    from phasetrain.loop import Trainer

    sets = [f"run.steps={steps}", f"run.out_dir={json.dumps(str(out_dir))}", "observers.console.quiet=true"]
    if device is not None:
        sets.append(f"run.device={json.dumps(device)}")
    trainer = Trainer.from_config(source, [*sets, *overrides], plugins=list(plugins))
    if fit:
        trainer.fit()
    return trainer
