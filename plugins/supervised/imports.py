"""Import paths in configs: resolved once, checked, and only called when they may be.

An import path is code. A config the user gives (a file, a preset, ``phasetrain.fit``) is
theirs, so its paths are imported and called (``ctx.trust_code`` is True). A config read back
from a run directory (``phasetrain.load_model``) is not: a run directory from elsewhere could
name ``os:system``. Its paths are called only when

- the caller opts in (``load_model(..., trust_code=True)``, the convention of Hugging Face's
  ``trust_remote_code``), or
- the user's own config names the same path: a config this process trained with, or an
  installed preset (installed code is already trusted as much as the plugins themselves).

Nothing is imported before that check (importing runs a module's top-level code), and what a
factory returns is checked to be what the field promises.
"""

from __future__ import annotations

import functools
import importlib
import tomllib
from collections.abc import Mapping
from typing import Any

from phasetrain.errors import ConfigError

#: Import paths named by configs this process was given to train with (trusted from then on).
_OWN: set[str] = set()


def _strings(value: Any) -> set[str]:
    if isinstance(value, str):
        return {value}
    if isinstance(value, Mapping):
        return {s for v in value.values() for s in _strings(v)}
    if isinstance(value, list):
        return {s for v in value for s in _strings(v)}
    return set()


@functools.lru_cache(maxsize=1)
def preset_paths() -> frozenset[str]:
    """Every string the ``[task]`` sections of installed presets hold (their import paths)."""
    from phasetrain.registry import load_registry

    found: set[str] = set()
    for resource, _origin in load_registry().presets().values():
        try:
            found |= _strings(tomllib.loads(resource.read_text()).get("task", {}))
        except (OSError, tomllib.TOMLDecodeError, AttributeError):
            continue
    return frozenset(found)


def split(path: str) -> tuple[str, str]:
    """``"a.b:C.d"`` → ``("a.b", "C.d")``; ``"a.b.C"`` → ``("a.b", "C")``."""
    module, sep, attribute = path.partition(":")
    return (module, attribute) if sep else tuple(path.rsplit(".", 1))  # type: ignore[return-value]


class Resolver:
    """Resolves the import-path fields of one config section for one run."""

    def __init__(self, ctx: Any, section: str = "task"):
        self.objects: Mapping[str, Any] = ctx.objects
        self.trusted: bool = ctx.trust_code
        self.source, self.section = ctx.config.source, section

    def error(self, field: str, message: str) -> ConfigError:
        return ConfigError(self.source, f"{self.section}.{field}", message)

    def load(self, field: str, path: str) -> Any:
        """The object ``path`` names (a live object handed to the run, or an import), uncalled."""
        if self.trusted and not path.startswith("@"):
            _OWN.add(path)  # the user's own config names it
        if path in self.objects:
            return self.objects[path]
        if path.startswith("@"):
            raise self.error(field, f"{path!r} names a live object this run was not given (pass it to "
                                    "phasetrain.fit, or name an import path)")
        if not (self.trusted or path in _OWN or path in preset_paths()):
            raise self.error(field, f"{path!r} is code named by a config read from a run directory; it runs only "
                                    "with trust_code=True, or when your own config names it")
        module_name, attribute = split(path)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise self.error(field, f"cannot import {path!r}: no module named {exc.name!r}") from None
        except Exception as exc:  # the module's own code failed while importing
            raise self.error(field, f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}") from None
        found: Any = module
        for part in attribute.split("."):
            if not hasattr(found, part):
                where = f"module {module_name!r}" if found is module else repr(found)
                raise self.error(field, f"cannot import {path!r}: {where} has no attribute {part!r}")
            found = getattr(found, part)
        return found

    def build(self, field: str, path: str, args: tuple[str, Mapping[str, Any]], is_result: Any, what: str) -> Any:
        """What ``path`` names if it is already ``what`` (``is_result(obj)``), else the result of
        calling it with the keyword arguments ``args = (field, values)``; anything else is an
        error naming the field."""
        found, (args_field, args) = self.load(field, path), args
        if is_result(found) and not isinstance(found, type):
            if args:
                raise self.error(args_field, f"{path!r} is already {what}; arguments apply to a callable only")
            return found
        if not callable(found):
            raise self.error(field, f"{path!r} is a {type(found).__name__}: expected {what} or a callable returning one")
        try:
            made = found(**args)
        except Exception as exc:  # the user's callable refused its arguments or failed
            raise self.error(field, f"calling {path!r} failed: {type(exc).__name__}: {exc}") from None
        if not is_result(made):
            raise self.error(field, f"{path!r} returned a {type(made).__name__}, not {what}")
        return made
