"""Kinds, components, and loading of the ``phasetrain`` entry-point group.

A *plugin* is any object with pluggy hook implementations; installed plugins are found through
the ``phasetrain`` entry-point group (phasetrain's own built-ins are declared there too). A
plugin declares *kinds* (``phasetrain_kinds``: a new section of the config, such as a pruner)
and contributes *components* (``phasetrain_components``: one named implementation of a kind,
chosen with ``use = "name"``). The kernel declares only the kinds its loop calls.

We load entry points ourselves instead of calling ``PluginManager.load_setuptools_entrypoints``
because pluggy cannot filter by distribution (``PHASETRAIN_DISABLE_PLUGIN_AUTOLOAD``) and does
not say which distribution a broken entry point came from. A plugin that fails to load, or whose
contributions clash with another's, is kept aside as *broken*: ``phasetrain plugins`` lists it
with its error, every other command warns once and goes on, and only a run that uses one of its
names fails (exit 2, naming it).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
import warnings
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import attrs
import pluggy

from phasetrain import hookspecs
from phasetrain.errors import PluginError, UnknownComponent

GROUP = "phasetrain"
DISTRIBUTION = "phasetrain"
AUTOLOAD_ENV = "PHASETRAIN_DISABLE_PLUGIN_AUTOLOAD"


class PluginWarning(UserWarning):
    """A plugin is broken; what does not use it goes on."""


@attrs.frozen
class Kind:
    """A kind of component: one section of the config (or a table of them, when ``many``).

    ``protocol`` is the ``typing.Protocol`` its objects follow (checked when one is built);
    ``required`` means a config must choose one; ``main_only`` builds them on the main process
    only (loggers); ``resumable`` lets the section change on ``--resume``; ``contracts`` names
    the module holding the conformance kit's contracts for the kind (imported by the kit only).
    """

    name: str
    summary: str
    protocol: type | None = None
    many: bool = False
    section: str = ""  # the config section; "" means the kind's name
    required: bool = False
    main_only: bool = False
    resumable: bool = False
    contracts: str = ""

    @property
    def key(self) -> str:
        return self.section or self.name


def kernel_kinds() -> tuple[Kind, ...]:
    """The kinds the kernel's loop calls (built on first use: the protocols import torch)."""
    from phasetrain import types

    return (
        Kind("task", "the model, its batches, its loss and its evaluation", types.Task, required=True),
        Kind("optimizer", "a torch.optim.Optimizer over the trainable parameters", types.Optimizer,
             contracts="phasetrain.testing.optimizer"),
        Kind("lr_schedule", "a learning-rate scheduler for an optimizer", types.LrSchedule),
        Kind("schedule", "which phase runs at each step", types.Schedule),
        Kind("precision", "dtype, autocast and loss scaling", types.Precision, contracts="phasetrain.testing.precision"),
        Kind("strategy", "how the model is wrapped and work is split across processes", types.Strategy,
             resumable=True),
        Kind("store", "where checkpoints are written and read back", types.Store),
        Kind("observer", "a logger or monitor that only listens to hooks", many=True, section="observers",
             main_only=True, resumable=True, contracts="phasetrain.testing.observer"),
    )


@attrs.define(frozen=True)
class NoOptions:
    """Config class of a component that takes no options."""


@attrs.frozen
class Component:
    """One named implementation of a kind.

    ``factory(options, ctx)`` builds the component from an instance of ``config`` (an attrs
    class whose fields are the keys a config section may set) and a ``BuildContext``. The built
    object is registered with the run's plugin manager, so any hook it implements fires.
    ``default`` makes it the component of its kind when a config does not choose one.
    """

    kind: str
    name: str
    factory: Callable[[Any, Any], Any]
    config: type = NoOptions
    summary: str = ""
    default: bool = False


@attrs.frozen
class PluginInfo:
    """An installed plugin: the entry point, the object it loaded, and where it came from.
    ``error`` is why it is broken (then ``plugin`` is None or not registered)."""

    name: str
    plugin: Any = attrs.field(repr=False, eq=False)
    distribution: str
    version: str
    error: str = ""

    @property
    def builtin(self) -> bool:
        return _normalise(self.distribution) == DISTRIBUTION

    @property
    def label(self) -> str:
        return f"plugin {self.name!r} from {self.distribution} {self.version}".rstrip()


class Registered(NamedTuple):
    """A component together with the plugin that contributed it."""

    component: Component
    origin: PluginInfo


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-")


class Registry:
    """The installed plugins and every kind, component and preset they contribute."""

    def __init__(self, plugins: Iterable[PluginInfo]):
        self.plugins: list[PluginInfo] = []
        self.broken: list[PluginInfo] = [info for info in plugins if info.error]
        self.kinds: dict[str, Kind] = {k.name: k for k in kernel_kinds()}
        self._kind_origin: dict[str, PluginInfo] = {}
        self._components: dict[tuple[str, str], Registered] = {}
        self._conflicts: dict[tuple[str, str], str] = {}
        self._presets: dict[str, tuple[Any, PluginInfo]] = {}
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        asked = []
        for info in (i for i in plugins if not i.error):
            try:
                register(pm, info.plugin, f"{info.distribution}:{info.name}", "")
                answers = [self._ask(pm, info, hook) for hook in ("phasetrain_kinds", "phasetrain_components")]
                presets = self._ask(pm, info, "phasetrain_presets")
                for kind in answers[0]:  # kinds first: a component may be of a kind declared later
                    self._add_kind(kind, info)
                asked.append((info, answers[1], presets))
            except Exception as exc:  # foreign code: any failure makes the plugin broken, nothing else
                self.broken.append(attrs.evolve(info, error=str(exc) if isinstance(exc, PluginError) else
                                                f"{type(exc).__name__}: {exc}"))
        for info, components, presets in asked:
            if bad := [c for c in components if not isinstance(c, Component) or c.kind not in self.kinds]:
                what = f"component {bad[0].name!r} of unknown kind {bad[0].kind!r}" if isinstance(bad[0], Component) else repr(bad[0])
                self.broken.append(attrs.evolve(info, error=f"phasetrain_components returned {what} (kinds: "
                                                f"{', '.join(self.kinds)}; a new kind is declared with phasetrain_kinds)"))
                continue
            self.plugins.append(info)
            for component in components:
                self._add(component, info)
            for name, path in presets.items():
                self._presets.setdefault(name, (path, info))
        self.plugins.sort(key=lambda p: (not p.builtin, p.distribution, p.name))

    @staticmethod
    def _ask(pm: pluggy.PluginManager, info: PluginInfo, hook: str) -> Any:
        impl = next((i for i in getattr(pm.hook, hook).get_hookimpls() if i.plugin is info.plugin), None)
        found = (impl.function() if impl else None) or ()
        return dict(found) if hook == "phasetrain_presets" else list(found)

    def _add_kind(self, kind: Kind, info: PluginInfo) -> None:
        if not isinstance(kind, Kind):
            raise PluginError(f"phasetrain_kinds returned {kind!r}; expected phasetrain.registry.Kind objects")
        if kind.name in self.kinds:
            other = self._kind_origin.get(kind.name)
            raise PluginError(f"declares kind {kind.name!r}, which {other.label if other else 'the kernel'} declares")
        self.kinds[kind.name], self._kind_origin[kind.name] = kind, info

    def _add(self, component: Component, info: PluginInfo) -> None:
        key = (component.kind, component.name)
        if key in self._conflicts:
            self._conflicts[key] += f" and by {info.label}"
        elif key in self._components:
            other = self._components.pop(key).origin
            self._conflicts[key] = f"{key[0]} {key[1]!r} is registered twice: by {other.label} and by {info.label}"
        else:
            self._components[key] = Registered(component, info)

    # -- look-ups -------------------------------------------------------------------------------

    def kind(self, name: str) -> Kind:
        if name not in self.kinds:
            raise UnknownComponent("kind", name, self.kinds)
        return self.kinds[name]

    def get(self, kind: str, name: str) -> Component:
        """The component of ``kind`` called ``name``; an error lists the available names."""
        if (found := self._components.get((kind, name))) is not None:
            return found.component
        if (kind, name) in self._conflicts:
            raise PluginError(self._conflicts[(kind, name)] + "; uninstall one of them")
        hint = "".join(f"; {b.label} is broken ({b.error}) and may provide it" for b in self.broken)
        raise UnknownComponent(kind, name, self.names(kind), hint)

    def defaults(self, kind: str) -> list[str]:
        """The components marked ``default`` for ``kind`` (the first is used for a single kind)."""
        return sorted(n for (k, n), r in self._components.items() if k == kind and r.component.default)

    def origin(self, kind: str, name: str) -> PluginInfo:
        return self._components[(kind, name)].origin

    def kind_origin(self, kind: str) -> PluginInfo | None:
        return self._kind_origin.get(kind)

    def names(self, kind: str) -> list[str]:
        return sorted(n for k, n in self._components if k == kind)

    def components(self) -> list[Registered]:
        return [self._components[key] for key in sorted(self._components)]

    def conflicts(self) -> list[str]:
        return list(self._conflicts.values())

    def presets(self) -> dict[str, tuple[Any, PluginInfo]]:
        return dict(sorted(self._presets.items()))

    def warn_broken(self) -> None:
        for text in [f"{i.label} is broken and was skipped: {i.error}" for i in self.broken] + [
                f"{c}; neither is used" for c in self.conflicts()]:
            warnings.warn(text, PluginWarning, stacklevel=2)

    def plugin_manager(self) -> pluggy.PluginManager:
        """A fresh plugin manager with every working plugin registered: each run gets its own, so
        components registered for one run never hear another run's hooks."""
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        for info in self.plugins:
            register(pm, info.plugin, f"{info.distribution}:{info.name}", info.label)
        return pm

    def label_of(self, plugin: Any) -> str:
        """Who a registered plugin object is, for error messages."""
        found = (info.label for info in self.plugins if info.plugin is plugin)
        return next(found, f"plugin {getattr(plugin, '__name__', type(plugin).__name__)!r}")


def _first_line(exc: Exception) -> str:
    """pluggy's message in one line, without object reprs: ``unknown hook 'post_stp'``, or
    ``hook 'post_step': Argument(s) {'bogus'} are declared in the hookimpl but ...``."""
    lines = str(exc).splitlines() or [type(exc).__name__]
    if hook := re.search(r"for hook '(\w+)'", lines[0]):
        return f"hook {hook.group(1)!r}: {lines[-1]}"
    return re.sub(r" in plugin <.*$", "", lines[0])


def register(pm: pluggy.PluginManager, plugin: Any, name: str, label: str) -> None:
    """Register ``plugin`` with ``pm``; a hook that does not fit its spec is a PluginError."""
    try:
        pm.register(plugin, name=name)
        pm.check_pending()
    except (pluggy.PluginValidationError, ValueError) as exc:
        if pm.is_registered(plugin):
            pm.unregister(plugin)
        raise PluginError(f"{label}: {_first_line(exc)}" if label else _first_line(exc)) from None


def discover(autoload: bool | None = None) -> list[PluginInfo]:
    """Load the ``phasetrain`` entry points; with autoload off, only phasetrain's own. One that
    fails to import comes back with ``error`` set, naming its distribution and the cause."""
    autoload = os.environ.get(AUTOLOAD_ENV, "") in ("", "0") if autoload is None else autoload
    found: list[PluginInfo] = []
    seen: set[tuple[str, str]] = set()
    for dist in importlib.metadata.distributions():
        dist_name = dist.metadata["Name"] or "unknown"
        for ep in dist.entry_points:
            key = (_normalise(dist_name), ep.name)
            if ep.group != GROUP or key in seen:  # the same distribution may be seen twice on sys.path
                continue
            seen.add(key)
            if not autoload and key[0] != DISTRIBUTION:
                continue
            try:
                found.append(PluginInfo(ep.name, ep.load(), dist_name, dist.version))
            except Exception as exc:  # any import failure of foreign code
                error = f"entry point {ep.value} failed to load: {type(exc).__name__}: {exc}"
                found.append(PluginInfo(ep.name, None, dist_name, dist.version, error))
    return found


@functools.lru_cache(maxsize=2)
def _cached(autoload: bool) -> Registry:
    registry = Registry(discover(autoload))
    registry.warn_broken()
    return registry


def load_registry(extra: Iterable[PluginInfo] = ()) -> Registry:
    """The registry of installed plugins (cached per process), plus ``extra`` plugins if given.

    ``extra`` lets tests and API users add plugin objects that are not installed.
    """
    autoload = os.environ.get(AUTOLOAD_ENV, "") in ("", "0")
    extra = list(extra)
    if not extra:
        return _cached(autoload)
    return Registry([*discover(autoload), *extra])


def plugin(obj: Any, name: str | None = None, distribution: str = "(not installed)") -> PluginInfo:
    """Wrap an object that is not installed through an entry point as a plugin."""
    return PluginInfo(name or getattr(obj, "__name__", type(obj).__name__), obj, distribution, "")
