"""Cheap per-step hook calls.

``pre_step``, ``run_step`` and ``post_step`` fire every step, and on tiny models pluggy's
general call path (argument checks, a copy of the implementation list, the multicall loop) is a
visible share of the step. :class:`FastHooks` resolves each of them once per change of the
registered plugins: no implementation → no call; exactly one plain implementation → a direct
call with the arguments it asks for; anything else (several implementations, wrappers) → the
ordinary pluggy call. The results are the same as calling through pluggy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy


def _noop(**_kwargs: Any) -> None:
    return None


def _resolve(caller: pluggy.HookCaller) -> Callable[..., Any]:
    impls = caller.get_hookimpls()
    if not impls:
        return _noop
    if len(impls) == 1 and not (impls[0].hookwrapper or impls[0].wrapper):
        function, argnames = impls[0].function, tuple(impls[0].argnames)
        firstresult = bool(caller.spec and caller.spec.opts.get("firstresult"))

        def direct(**kwargs: Any) -> Any:
            result = function(*[kwargs[name] for name in argnames])
            if firstresult:
                return result
            return [] if result is None else [result]

        return direct
    return caller


class FastHooks:
    """Per-step hook callers for one plugin manager; call :meth:`refresh` after registering."""

    NAMES = ("pre_step", "run_step", "post_step")

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self.refresh()

    def refresh(self) -> None:
        for name in self.NAMES:
            setattr(self, name, _resolve(getattr(self.pm.hook, name)))
