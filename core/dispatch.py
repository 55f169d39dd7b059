"""Cheap per-step hook calls.

``pre_step``, ``run_step``, ``after_backward`` and ``post_step`` fire every step, and on tiny models pluggy's
general call path (argument checks, a copy of the implementation list, the multicall loop) is a
visible share of the step. :class:`FastHooks` resolves each of them once per change of the
registered plugins: no implementation → no call; plain implementations → direct calls in
pluggy's order with the arguments each asks for (the first non-None result for ``run_step``);
any hook wrapper → the ordinary pluggy call. The results are the same as calling through pluggy.
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
    if any(impl.hookwrapper or impl.wrapper for impl in impls):
        return caller  # wrappers need pluggy's full protocol
    # pluggy calls the last of get_hookimpls() first (tryfirst ... trylast order)
    calls = [(impl.function, tuple(impl.argnames)) for impl in reversed(impls)]
    firstresult = bool(caller.spec and caller.spec.opts.get("firstresult"))

    def loop(**kwargs: Any) -> Any:
        results = []
        for function, argnames in calls:
            if (result := function(*[kwargs[name] for name in argnames])) is not None:
                if firstresult:
                    return result
                results.append(result)
        return None if firstresult else results

    return loop


class FastHooks:
    """Per-step hook callers for one plugin manager; call :meth:`refresh` after registering."""

    NAMES = ("pre_step", "run_step", "after_backward", "post_step")

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self.refresh()

    def refresh(self) -> None:
        for name in self.NAMES:
            setattr(self, name, _resolve(getattr(self.pm.hook, name)))
