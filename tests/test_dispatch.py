"""FastHooks calls hook implementations exactly as pluggy would."""

from __future__ import annotations

import pluggy

from phasetrain import hookimpl, hookspecs
from phasetrain.dispatch import FastHooks


def manager(*plugins):
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for i, p in enumerate(plugins):
        pm.register(p, name=f"p{i}")
    return pm


class Calls:
    def __init__(self, tag, log, result=None):
        self.tag, self.log, self.result = tag, log, result

    @hookimpl
    def post_step(self, step, metrics):
        self.log.append((self.tag, step))
        metrics[self.tag] = True

    @hookimpl
    def run_step(self, step):
        self.log.append((self.tag, "run"))
        return self.result


class First:
    def __init__(self, log):
        self.log = log

    @hookimpl(tryfirst=True)
    def post_step(self, step):
        self.log.append(("first", step))


def test_order_arguments_and_results_match_pluggy():
    for plugins_of in (
        lambda log: [Calls("a", log)],
        lambda log: [Calls("a", log), Calls("b", log, {"loss": 1}), First(log)],
        lambda log: [First(log), Calls("a", log, {"loss": 2}), Calls("b", log)],
    ):
        log_fast, log_pluggy = [], []
        fast = FastHooks(manager(*plugins_of(log_fast)))
        pm = manager(*plugins_of(log_pluggy))
        m1, m2 = {}, {}
        fast.post_step(trainer=None, step=3, metrics=m1)
        pm.hook.post_step(trainer=None, step=3, metrics=m2)
        r1 = fast.run_step(trainer=None, step=4, phase=None)
        r2 = pm.hook.run_step(trainer=None, step=4, phase=None)
        assert log_fast == log_pluggy and m1 == m2 and r1 == r2


def test_no_implementation_is_a_no_op():
    fast = FastHooks(manager())
    assert fast.pre_step(trainer=None, step=0) is None
