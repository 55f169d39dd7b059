"""Component kinds, the plugin registry, and loading of the ``phasetrain`` entry-point group.

A *plugin* is any object with pluggy hook implementations; installed plugins are found through
the ``phasetrain`` entry-point group (phasetrain's own built-ins are declared there too, in its
pyproject.toml). A plugin contributes *components* through the ``phasetrain_components`` hook;
a component is one named, configurable implementation of a kind, chosen in a config with
``use = "name"``.

We load entry points ourselves instead of calling ``PluginManager.load_setuptools_entrypoints``
because pluggy cannot filter by distribution (``PHASETRAIN_DISABLE_PLUGIN_AUTOLOAD``) and does
not say which distribution a broken entry point came from; the plugins are still registered with
and called through pluggy.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import pluggy

from phasetrain import hookspecs
from phasetrain.errors import PluginError, UnknownComponent

GROUP = "phasetrain"
DISTRIBUTION = "phasetrain"
AUTOLOAD_ENV = "PHASETRAIN_DISABLE_PLUGIN_AUTOLOAD"

#: Every kind of component a config section can choose, with what its factory returns.
KINDS: Mapping[str, str] = {
    "task": "the model, its batches, its loss and its evaluation",
    "optimizer": "a torch.optim.Optimizer over the given parameters",
    "lr_schedule": "a torch.optim.lr_scheduler scheduler for an optimizer",
    "schedule": "which phase runs at each step",
    "dynamics": "predicted weight deltas, loss and confidence for predicted steps",
    "precision": "dtype, autocast and loss scaling",
    "offload": "where optimizer state lives in each phase",
    "residual": "a PDE residual with its conditions, domain and exact solution",
    "sampler": "collocation points for a PINN",
    "observer": "a logger or monitor that only listens to hooks",
}


@attrs.define(frozen=True)
class NoOptions:
    """Config class of a component that takes no options."""


@attrs.frozen
class Component:
    """One named implementation of a kind.

    ``factory(options, ctx)`` builds the component from an instance of ``config`` (an attrs
    class whose fields are the keys a config section may set) and a :class:`BuildContext`.
    The built object is registered with the run's plugin manager, so any hook it implements fires.
    """

    kind: str = attrs.field()
    name: str
    factory: Callable[[Any, Any], Any]
    config: type = NoOptions
    summary: str = ""

    @kind.validator
    def _known_kind(self, _attribute: Any, value: str) -> None:
        if value not in KINDS:
            raise ValueError(f"unknown component kind {value!r}; kinds are {', '.join(KINDS)}")


@attrs.frozen
class PluginInfo:
    """An installed plugin: the entry point, the object it loaded, and where it came from."""

    name: str
    plugin: Any = attrs.field(repr=False, eq=False)
    distribution: str
    version: str

    @property
    def builtin(self) -> bool:
        return _normalise(self.distribution) == DISTRIBUTION

    @property
    def label(self) -> str:
        return f"plugin {self.name!r} from {self.distribution} {self.version}"


@attrs.frozen
class Registered:
    """A component together with the plugin that contributed it."""

    component: Component
    origin: PluginInfo


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-")


class Registry:
    """The installed plugins and every component and preset they contribute."""

    def __init__(self, plugins: Iterable[PluginInfo]):
        self.plugins: list[PluginInfo] = list(plugins)
        self._components: dict[tuple[str, str], Registered] = {}
        self._presets: dict[str, tuple[Any, PluginInfo]] = {}
        pm = self.plugin_manager()
        for info in self.plugins:
            impl = _impl_of(pm, "phasetrain_components", info)
            for component in (impl() if impl else None) or ():
                self._add(component, info)
            impl = _impl_of(pm, "phasetrain_presets", info)
            for name, path in ((impl() if impl else None) or {}).items():
                if name in self._presets:
                    other = self._presets[name][1]
                    raise PluginError(
                        f"preset {name!r} is offered twice: by {other.label} and by {info.label}"
                    )
                self._presets[name] = (path, info)

    def _add(self, component: Component, info: PluginInfo) -> None:
        if not isinstance(component, Component):
            raise PluginError(
                f"{info.label} returned {component!r} from phasetrain_components; "
                "expected phasetrain.registry.Component objects"
            )
        key = (component.kind, component.name)
        if key in self._components:
            other = self._components[key].origin
            raise PluginError(
                f"{component.kind} {component.name!r} is registered twice: by {other.label} "
                f"and by {info.label}; uninstall one of them"
            )
        self._components[key] = Registered(component, info)

    # -- look-ups -------------------------------------------------------------------------------

    def get(self, kind: str, name: str) -> Component:
        """The component of ``kind`` called ``name``; an error lists the available names."""
        found = self._components.get((kind, name))
        if found is None:
            raise UnknownComponent(kind, name, self.names(kind))
        return found.component

    def origin(self, kind: str, name: str) -> PluginInfo:
        return self._components[(kind, name)].origin

    def names(self, kind: str) -> list[str]:
        return sorted(n for k, n in self._components if k == kind)

    def components(self) -> list[Registered]:
        return [self._components[key] for key in sorted(self._components)]

    def presets(self) -> dict[str, tuple[Any, PluginInfo]]:
        return dict(sorted(self._presets.items()))

    # -- plugin managers ------------------------------------------------------------------------

    def plugin_manager(self) -> pluggy.PluginManager:
        """A fresh plugin manager with every installed plugin registered and checked.

        Each run gets its own manager, so components registered for one run never hear another
        run's hooks.
        """
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        for info in self.plugins:
            register(pm, info.plugin, info.name, info.label)
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"{_owner(self.plugins, exc.plugin)}: {exc}") from None
        return pm


def register(pm: pluggy.PluginManager, plugin: Any, name: str, label: str) -> None:
    """Register ``plugin`` with ``pm``; a hook that does not fit its spec is a PluginError."""
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"{label}: {exc}") from None
    except ValueError as exc:  # the same object or name registered twice
        raise PluginError(f"{label}: {exc}") from None


def _impl_of(pm: pluggy.PluginManager, hook: str, info: PluginInfo) -> Callable[[], Any] | None:
    for impl in getattr(pm.hook, hook).get_hookimpls():
        if impl.plugin is info.plugin:
            return impl.function
    return None


def _owner(plugins: Iterable[PluginInfo], plugin: Any) -> str:
    for info in plugins:
        if info.plugin is plugin:
            return info.label
    return f"plugin {plugin!r}"


def discover(autoload: bool | None = None) -> list[PluginInfo]:
    """Load the ``phasetrain`` entry points; with autoload off, only phasetrain's own.

    A plugin that fails to import is a :class:`PluginError` naming the entry point, its
    distribution and version, and the cause.
    """
    if autoload is None:
        autoload = os.environ.get(AUTOLOAD_ENV, "") in ("", "0")
    found: list[PluginInfo] = []
    seen: set[tuple[str, str]] = set()
    for dist in importlib.metadata.distributions():
        dist_name = dist.metadata["Name"] or "unknown"
        for ep in dist.entry_points:
            if ep.group != GROUP:
                continue
            key = (_normalise(dist_name), ep.name)
            if key in seen:  # the same distribution seen twice on sys.path
                continue
            seen.add(key)
            if not autoload and key[0] != DISTRIBUTION:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # any import failure of foreign code
                raise PluginError(
                    f"entry point {ep.name!r} ({ep.value}) of distribution {dist_name} "
                    f"{dist.version} failed to load: {type(exc).__name__}: {exc}"
                ) from exc
            found.append(PluginInfo(ep.name, plugin, dist_name, dist.version))
    found.sort(key=lambda p: (not p.builtin, p.distribution, p.name))
    return found


@functools.lru_cache(maxsize=2)
def _cached(autoload: bool) -> Registry:
    return Registry(discover(autoload))


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
