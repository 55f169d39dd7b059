"""The Trainer and its event loop.

The Trainer owns the run's state and composes the components a config chooses; it knows no
optimizer, task or device vendor. Every kind is built the same way (``factory(options, ctx)``)
and registered with the run's plugin manager, so each component hears the hooks it implements.
The loop itself is :meth:`Trainer.fit` and reads like the protocol in ``hookspecs``; it alone
changes training state (steps, data position, learning-rate schedules, rollbacks).
"""

from __future__ import annotations

import inspect
import random
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from phasetrain import config as config_mod
from phasetrain import step as step_mod
from phasetrain.config import Choice, Config
from phasetrain.dispatch import FastHooks
from phasetrain.errors import BadInput, CheckpointError, HookFailed, PhasetrainError, PluginError, TrainingFailed
from phasetrain.registry import PluginInfo, Registry, load_registry, register
from phasetrain.state import not_plain, rng_state, set_rng_state
from phasetrain.strategy import SingleProcess
from phasetrain.types import Evaluates, KnowsPhaseLengths, Outcome, Phase, ReadsOwnShard, TrainState, Unscales, missing  # noqa: F401

_BUILDING = object()


class BuildContext:
    """What a component factory may use: the config, the device, other components, and (for
    optimizers and learning-rate schedules) the parameters or optimizer to wrap."""

    def __init__(self, trainer: Trainer, params: Any = None, optimizer: Any = None, steps: int | None = None,
                 **extra: Any):
        self.trainer, self.config, self.seed = trainer, trainer.config, trainer.config.run.seed
        self.params, self.optimizer, self.extra = params, optimizer, extra
        self.steps: int = trainer.config.run.steps if steps is None else steps

    out_dir = property(lambda self: self.trainer.out_dir, doc="the run's directory (see the run_dir hook)")
    device = property(lambda self: self.trainer.device, doc="the run's torch.device")
    strategy = property(lambda self: self.trainer.strategy, doc="the run's strategy")
    objects = property(lambda self: self.trainer.objects, doc="live objects the run was given, by config value")
    trust_code = property(lambda self: self.trainer.trust_code, doc="whether code the config names may run")
    model_only = property(lambda self: self.trainer.model_only, doc="built only to read the model back (load_model)")

    def component(self, kind: str) -> Any:
        """The run's component of ``kind`` (built on first use), or ``None`` if not configured."""
        return self.trainer.component(kind)

    def build(self, choice: Choice, **extra: Any) -> Any:
        """Build a nested component from a :class:`Choice` (for example a stage's optimizer)."""
        return self.trainer.build(choice, **extra)


class Trainer:
    """Runs the schedule's phases step by step and fires the hooks.

    Build one with :meth:`from_config`; train with :meth:`fit`. Components are reachable as
    attributes (``trainer.task``, ``trainer.model``, ``trainer.optimizer``, ``trainer.precision``)
    or with :meth:`component`.

    ``objects`` are live Python objects (a model instance, a dataset) that stand in for the
    config values they are keyed by: factories read them from ``ctx.objects``
    (``phasetrain.fit`` passes them). ``trust_code`` says whether factories may call code the
    config names (import paths): a config the user gives is trusted; one read back from a run
    directory is not, unless the caller opts in (``load_model(..., trust_code=True)``).
    ``model_only`` marks a run built only to read its model back (``load_model``): factories may
    skip what only training needs, such as reading data.
    """

    def __init__(self, config: Config, *, registry: Registry | None = None, plugins: Iterable[Any] = (),
                 objects: Mapping[str, Any] | None = None, trust_code: bool = True, model_only: bool = False,
                 resume: bool | str = False, run_dir: str | Path | None = None):
        self.config, self.out_dir = config, Path(config.run.out_dir)
        self.objects, self.trust_code, self.model_only = dict(objects or {}), trust_code, model_only
        self.registry = registry or config.registry or load_registry()
        self.pm = self.registry.plugin_manager()
        self._labels = {id(i.plugin): i.label for i in self.registry.plugins}
        self._add(step_mod, "phasetrain.step", "the kernel's real step")
        for index, extra in enumerate(plugins):
            name = getattr(extra, "__name__", f"{type(extra).__name__}-{index}")
            self._add(extra, f"extra:{name}:{index}", f"plugin {name!r}")
        self.hooks = FastHooks(self.pm)
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        self.state, self.phase, self.outcome, self.resumed_from = TrainState(), None, None, None
        self.optimizers, self.lr_schedulers, self.last_eval, self._components = {}, {}, {}, {}
        self._stop, self._save_now, self._rollback, self._saved, self._evaluated = False, False, None, -1, -1
        self.skip_requested = False
        self.strategy = self.component("strategy") or SingleProcess()
        chosen = run_dir if run_dir is not None else self.pm.hook.run_dir(trainer=self, config=config, resume=resume)
        self.out_dir = Path(chosen if chosen is not None else config.run.out_dir)
        self.device = self.strategy.device(config.run.device)
        seed = config.run.seed + self.strategy.rank  # every generator, before anything is built
        random.seed(seed), np.random.seed(seed % 2**32), torch.manual_seed(seed)
        for kind in ("precision", "task", "schedule"):  # the model is initialised right after seeding
            self.component(kind)
        self.model: torch.nn.Module = self.task.model
        self.train_model: torch.nn.Module = self.strategy.wrap(self.model)  # what the real step runs
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]  # after wrap: FSDP2 swaps them
        for kind in [k for k in self.registry.kinds if k not in ("optimizer", "lr_schedule")]:  # in declared order
            self.component(kind)
        for phase in self.schedule.phases:
            self._build_optimizer(phase)
        self._evaluates, self.unscales = isinstance(self.task, Evaluates), isinstance(self.precision, Unscales)
        self._own_shard = isinstance(self.task, ReadsOwnShard)  # checked once: a protocol check costs microseconds

    @classmethod
    def from_config(cls, source: Config | Mapping[str, Any] | str | Path, overrides: Iterable[str] = (), *,
                    plugins: Iterable[PluginInfo | Any] = (), **options: Any) -> Trainer:
        """A Trainer from a :class:`Config`, a raw mapping, a preset name or a TOML/JSON path.

        ``plugins`` are extra plugin objects for this run (hook recorders, or components that
        are not installed: wrap those in :func:`phasetrain.registry.plugin` so that their
        ``phasetrain_kinds`` and ``phasetrain_components`` are registered too). ``options`` go to
        the constructor: ``objects``, ``trust_code``, ``model_only``, and ``resume`` (True for the
        latest run, or a run's name or path) and ``run_dir`` (see the ``run_dir`` hook).
        """
        plugins = list(plugins)
        registry = load_registry([p for p in plugins if isinstance(p, PluginInfo)])
        label, data = ((source.source, source.to_dict()) if isinstance(source, Config) else ("<dict>", source)
                       if isinstance(source, Mapping) else config_mod.resolve_source(str(source), registry))
        config = config_mod.build(data, overrides=overrides, source=label, registry=registry)
        return cls(config, registry=registry, plugins=[p for p in plugins if not isinstance(p, PluginInfo)], **options)

    # -- construction ---------------------------------------------------------------------------

    def _add(self, plugin: Any, name: str, label: str) -> None:
        register(self.pm, plugin, name, label)
        self._labels[id(plugin)] = label
        if hasattr(self, "hooks"):
            self.hooks.refresh()

    def build(self, choice: Choice, **extra: Any) -> Any:
        """Build a component from ``choice`` and register it with this run's hooks."""
        return self._make(choice.kind, choice.use, choice.options, **extra)

    def _make(self, kind: str, name: str, options: Any, **extra: Any) -> Any:
        component, origin, protocol = self.registry.get(kind, name), self.registry.origin(kind, name), self.registry.kinds[kind].protocol
        label = f"{kind} {name!r} from {origin.distribution} {origin.version}".rstrip()
        try:
            obj = component.factory(options, BuildContext(self, **extra))
        except PhasetrainError:
            raise
        except Exception as exc:
            raise PluginError(f"{label} failed to build: {type(exc).__name__}: {exc}") from exc
        if obj is not None and protocol is not None and not isinstance(obj, protocol):
            raise PluginError(f"{label} built a {type(obj).__name__}, which lacks "
                              f"{', '.join(missing(obj, protocol))} (see phasetrain.types.{protocol.__name__})")
        if obj is not None and not self.pm.is_registered(obj):
            self._add(obj, f"{kind}:{name}:{id(obj)}", label)
        return obj

    def component(self, kind: str) -> Any:
        """The run's component of ``kind``, built on first use; ``None`` if not configured (a
        dict of them by name for a kind with many)."""
        if (found := self._components.get(kind, _BUILDING)) is not _BUILDING:
            return found
        if kind in self._components:
            raise PluginError(f"components depend on each other in a circle through {kind!r}")
        spec = self.registry.kind(kind)
        section, self._components[kind] = self.config.sections.get(spec.key), _BUILDING
        try:
            if spec.main_only and not self.strategy.main:
                built = {} if spec.many else None
            elif spec.many:
                built = {n: self._make(kind, n, e.options) for n, e in (section or {}).items() if e.enabled}
            else:
                built = None if section is None else self.build(section)
        finally:
            del self._components[kind]
        self._components[kind] = built
        return built

    def _build_optimizer(self, phase: Phase) -> None:
        key = phase.optimizer_key
        if key in self.optimizers:
            return
        choice = phase.optimizer or self.config.optimizer
        if choice is None:
            raise BadInput("no [optimizer] is configured and no installed plugin offers a default")
        optimizer = self.optimizers[key] = self.build(choice, params=self.trainable)
        lr_choice = phase.lr_schedule or (self.config.lr_schedule if key == "main" else None)
        if lr_choice is not None:
            schedule = self.schedule
            steps = schedule.steps_of(phase) if isinstance(schedule, KnowsPhaseLengths) else self.config.run.steps
            self.lr_schedulers[key] = self.build(lr_choice, optimizer=optimizer, steps=steps)

    task = property(lambda self: self.component("task"))
    schedule = property(lambda self: self.component("schedule"))
    precision = property(lambda self: self.component("precision"))
    store = property(lambda self: self.component("store"))
    observers = property(lambda self: self.component("observer"), doc="observers by name (main process only)")
    step = property(lambda self: self.state.step, doc="completed steps")
    optimizer = property(lambda self: self.optimizers[self.phase.optimizer_key if self.phase else "main"],
                         doc="the optimizer of the current phase")
    lr_scheduler = property(lambda self: self.lr_schedulers.get(self.phase.optimizer_key if self.phase else "main"),
                            doc="the learning-rate schedule of the current phase's optimizer, if any")

    # -- requests: hooks ask, the loop applies them between steps ----------------------------------

    def request_stop(self, status: str = "interrupted") -> None:
        """Stop after the current step: the run evaluates, checkpoints and ends with ``status``
        (``"interrupted"``; early stopping, which ends a run as planned, says ``"stopped"``)."""
        self._stop = status

    stop_requested = property(lambda self: bool(self._stop), lambda self, value: self.request_stop() if value else None,
                              doc="whether a stop was requested (setting it is request_stop(), as in 0.1)")

    def request_skip_step(self) -> None:
        """From ``after_backward``: end this step without an optimizer update (``skipped = 1``)."""
        self.skip_requested = True

    def request_checkpoint(self) -> None:
        """Write a checkpoint after this step (on top of ``run.checkpoint_every``); every process
        must ask."""
        self._save_now = True

    def request_rollback(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` (a ``state_dict()``, or a checkpoint's) after this step."""
        self._rollback = state

    # -- the loop -------------------------------------------------------------------------------

    def enter_phase(self, phase: Phase) -> None:
        if phase not in self.schedule.phases:
            raise PluginError(f"the schedule returned phase {phase.name!r}, which its `phases` does not list")
        previous = self.phase
        if previous is not None or self.state.phase != phase.name:  # a resume continues its phase
            self.state.phase_step = 0
        self.phase, self.state.phase = phase, phase.name
        self.pm.hook.phase_enter(trainer=self, phase=phase, previous=previous)

    def fit(self) -> Outcome:
        """Train until ``run.steps`` (or a stop request) and return how the run ended."""
        hooks, run, schedule, state = self.hooks, self.config.run, self.schedule, self.state
        self.model.train()
        metrics: Any = {}
        status, error = "completed", ""
        started, before = time.perf_counter(), state.elapsed
        self._clock = (started, before)
        try:
            self.pm.hook.train_start(trainer=self)
            while state.step < run.steps and not self._agree_stop():
                step = state.step
                phase = schedule.phase(self)
                if phase is not self.phase:
                    self.enter_phase(phase)
                hooks.pre_step(trainer=self, step=step)
                first, scheduler = state.batches, self.lr_scheduler
                batches = self._fetch(first) if phase.real else ()
                epoch = getattr(scheduler, "last_epoch", None)
                metrics = hooks.run_step(trainer=self, step=step, phase=phase, batches=batches)
                if state.batches != first or getattr(scheduler, "last_epoch", None) != epoch:
                    raise PluginError("a run_step implementation advanced the data position or stepped the "
                                      "learning-rate schedule; since phasetrain 0.2 the loop does both (CHANGELOG.md)")
                state.batches = first + len(batches)
                if phase.real and scheduler is not None:
                    scheduler.step()
                state.step, state.phase_step = step + 1, state.phase_step + 1
                hooks.post_step(trainer=self, step=step, metrics=metrics)
                if self._rollback is not None:
                    self.load_state_dict(self._rollback)
                    self._rollback = None
                    continue
                if run.eval_every and state.step % run.eval_every == 0:
                    self.evaluate()
                if self._save_now or (run.checkpoint_every and state.step % run.checkpoint_every == 0):
                    self.save_checkpoint()
            status = self._stop or status
            if self._evaluated != state.step:
                self.evaluate()
            if self._saved != state.step or self._save_now:  # a request from the final evaluation too
                self.save_checkpoint()
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            blamed = self._blame(exc)
            error = str(blamed) or type(blamed).__name__
            try:
                self.pm.hook.train_error(trainer=self, step=state.step, error=blamed)
            except Exception as late:  # reported, never in place of the first error
                error += f" (and train_error failed: {type(late).__name__}: {late})"
            if blamed is exc:
                raise
            raise blamed from exc
        finally:
            state.elapsed = before + time.perf_counter() - started
            self.outcome = Outcome(status, state.step, state.elapsed, step_mod.as_numbers(metrics),
                                   dict(self.last_eval), error, str(self.out_dir))
            self.pm.hook.train_end(trainer=self, outcome=self.outcome)
        return self.outcome

    def _fetch(self, first: int) -> list[Any]:
        task, s = self.task, self.strategy
        fetch = (lambda i: task.batch_part(i, s.rank, s.size)) if self._own_shard else (lambda i: s.shard(task.batch(i)))
        return [fetch(first + i) for i in range(self.config.run.grad_accum_steps)]

    def _agree_stop(self) -> bool:
        # A signal may reach processes at different steps: they agree to stop at the same one,
        # at a real step (steps of other phases exchange nothing).
        if self.strategy.size > 1 and (self.phase is None or self.phase.real):  # the status of this process's request
            self._stop = (self._stop or "interrupted") if self.strategy.any(bool(self._stop)) else False
        return self._stop

    def _blame(self, exc: BaseException) -> BaseException:
        """``exc`` named after the plugin whose code raised it and the hook that was firing."""
        if not isinstance(exc, Exception) or isinstance(exc, PhasetrainError):
            return exc
        owners: dict[Any, str] = {}  # code object -> the plugin it belongs to
        for plugin in self.pm.get_plugins():
            label = self._labels.get(id(plugin), f"plugin {self.pm.get_name(plugin)!r}")
            module = inspect.ismodule(plugin)
            for _name, member in inspect.getmembers(plugin if module else type(plugin), callable):
                code = getattr(inspect.unwrap(member), "__code__", None)
                if code is not None and (not module or member.__module__ == plugin.__name__):
                    owners.setdefault(code, label)
        hooks = {inspect.unwrap(i.function).__code__: n for n, c in vars(self.pm.hook).items() for i in c.get_hookimpls()}
        frames, tb = [], exc.__traceback__
        while tb is not None:
            frames, tb = [*frames, tb.tb_frame.f_code], tb.tb_next
        hook = next((hooks[c] for c in frames if c in hooks), None)
        culprit = next((owners[c] for c in reversed(frames) if c in owners), None)
        if hook is None and culprit is None:
            return exc
        where, who = f"in hook {hook}: " if hook else "", f"{culprit} raised " if culprit else ""
        return HookFailed(f"at step {self.state.step}, {where}{who}{type(exc).__name__}: {exc}")

    def evaluate(self) -> dict[str, Any]:
        """Evaluate the task now (``eval_start``, ``task.evaluate``, ``eval_end``); return the metrics."""
        step = self.state.step
        self.pm.hook.eval_start(trainer=self, step=step)
        self.model.eval()
        try:
            with torch.no_grad():
                results = dict(self.task.evaluate(self.model)) if self._evaluates else {}
        finally:
            self.model.train()
        results["step"] = step
        self.pm.hook.eval_end(trainer=self, step=step, metrics=results)
        self.last_eval, self._evaluated = results, step
        return results

    # -- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run as if it had never stopped, as plain containers
        of tensors (what a checkpoint holds). Every process takes part (RNGs are gathered)."""
        plugins: dict[str, Any] = {}
        for impl in reversed(self.pm.hook.checkpoint.get_hookimpls()):  # one by one: who wrote what
            before = set(plugins)
            impl.function(*[{"trainer": self, "state": plugins}[a] for a in impl.argnames])
            for key in set(plugins) - before:
                if bad := not_plain(plugins[key]):
                    raise TrainingFailed(
                        f"{self._labels.get(id(impl.plugin), impl.plugin_name)} put {bad[1]} at "
                        f"{'.'.join(filter(None, (key, bad[0])))} into checkpoint state; checkpoints hold dicts, "
                        "lists and tuples of tensors, numbers, strings and None")
        return {
            "model": self.model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "lr_schedulers": {k: s.state_dict() for k, s in self.lr_schedulers.items()},
            "rng": {"per_rank": self.strategy.gather(rng_state())},
            "trainer": attrs.asdict(self.state),
            "plugins": plugins,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` (from :meth:`state_dict` or a checkpoint); ``restore`` fires.
        A state that does not fit this run is a :class:`CheckpointError`."""
        try:
            per_rank, counters = state["rng"]["per_rank"], dict(state["trainer"])
            if len(per_rank) != self.strategy.size:
                raise CheckpointError(f"the state was written by {len(per_rank)} process(es); this run has "
                                      f"{self.strategy.size}")
            if set(counters) != set(attrs.fields_dict(TrainState)):
                raise CheckpointError(f"the saved counters are {sorted(counters)}, not those of a TrainState")
            self.model.load_state_dict(state["model"])
            for key, optimizer in self.optimizers.items():
                optimizer.load_state_dict(state["optimizers"][key])
            for key, scheduler in self.lr_schedulers.items():
                scheduler.load_state_dict(state["lr_schedulers"][key])
            for key, value in counters.items():  # in place: the loop holds this object
                setattr(self.state, key, value)
            set_rng_state(per_rank[self.strategy.rank])
        except PhasetrainError:
            raise
        except Exception as exc:
            raise CheckpointError(f"the saved state does not fit this run: {type(exc).__name__}: {exc}") from None
        self.pm.hook.restore(trainer=self, state=state["plugins"])

    def resume(self, report: Any = print) -> Path:
        """Continue from the latest good checkpoint of the run's directory (``trainer.out_dir``).

        A checkpoint that fails to load, or whose state fails to apply (:meth:`load_state_dict` or
        a plugin's ``restore`` raises), is reported and the previous good one used (the store's
        ``latest(..., accept=)``). A checkpoint whose config differs in anything but bookkeeping
        (steps, cadences, output, observers) is refused.
        """
        def apply(path: Path, state: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
            if differing := config_mod.incompatible_keys(meta["config"], self.config):
                raise BadInput(f"cannot resume from {path}: the config differs in {', '.join(differing)} "
                               f"(only {', '.join(config_mod.resumable_keys(self.config))} may change)")
            self.load_state_dict(state)

        path = self.store.latest(self.out_dir, report, accept=apply)[0]
        self.resumed_from, self._saved = path, self.state.step
        return path

    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint of this step holds: :meth:`state_dict` after ``save_start``."""
        state = self.state_dict()
        self.pm.hook.save_start(trainer=self, step=self.state.step, state=state)
        if bad := not_plain(state):
            raise TrainingFailed(f"save_start left {bad[1]} at {bad[0]} in the checkpoint state")
        return state

    def save_checkpoint(self) -> Path:
        """Write a checkpoint of the whole run through the run's ``[store]``."""
        if clock := getattr(self, "_clock", None):  # checkpoints carry the training time so far
            self.state.elapsed = clock[1] + time.perf_counter() - clock[0]
        state, step, self._save_now = self.checkpoint_state(), self.state.step, False
        path = self.store.save(self, state)
        self._saved = step
        self.pm.hook.save_end(trainer=self, step=step, path=path)
        return path
