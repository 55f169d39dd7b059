"""The Trainer and its event loop.

The Trainer owns the run's state and composes the components a config chooses; it knows no
optimizer, task or device vendor. Every kind is built the same way (``factory(options, ctx)``)
and registered with the run's plugin manager, so each component hears the hooks it implements.
The loop itself is in :meth:`Trainer.fit` and reads like the protocol in ``hookspecs``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from phasetrain import config as config_mod
from phasetrain import distributed
from phasetrain import step as step_mod
from phasetrain.dispatch import FastHooks
from phasetrain.guard import NonFiniteGuard
from phasetrain.config import Choice, Config
from phasetrain.errors import BadInput, PhasetrainError
from phasetrain.registry import PluginInfo, Registry, load_registry, register


@attrs.frozen
class Phase:
    """A stretch of training with one behaviour, as the schedule names it.

    ``optimizer`` (and ``lr_schedule``) choose the phase's own optimizer; ``None`` means the
    run's ``[optimizer]`` section. Phases that share an optimizer share its state.
    ``predicted`` marks a phase whose steps take no data and compute no gradients (the hybrid
    schedule's Predict): plugins that change the training data, such as adaptive collocation
    samplers, wait for a real step.
    """

    name: str
    optimizer: Choice | None = None
    lr_schedule: Choice | None = None
    predicted: bool = False

    @property
    def optimizer_key(self) -> str:
        return self.name if self.optimizer is not None else "main"


@attrs.define
class TrainState:
    """Counters that, together with the components' own state, define where a run stands."""

    step: int = 0  # completed optimizer steps
    batches: int = 0  # micro-batches consumed: the data position
    phase: str = ""  # name of the current phase
    phase_step: int = 0  # steps completed in the current phase
    elapsed: float = 0.0  # seconds spent in fit() across resumes


@attrs.define
class Outcome:
    """How a run ended."""

    status: str  # "completed", "interrupted" or "failed"
    steps: int
    seconds: float
    metrics: dict[str, Any] = attrs.field(factory=dict)  # last step's metrics, as numbers
    eval: dict[str, Any] = attrs.field(factory=dict)  # last evaluation
    error: str = ""


class BuildContext:
    """What a component factory may use: the config, the device, other components, and (for
    optimizers and learning-rate schedules) the parameters or optimizer to wrap."""

    def __init__(self, trainer: Trainer, **extra: Any):
        self.trainer = trainer
        self.config = trainer.config
        self.device = trainer.device
        self.seed = trainer.config.run.seed
        self.out_dir = trainer.out_dir
        self.params: Any = extra.pop("params", None)
        self.optimizer: torch.optim.Optimizer | None = extra.pop("optimizer", None)
        self.steps: int = extra.pop("steps", trainer.config.run.steps)
        self.extra = extra

    def component(self, kind: str) -> Any:
        """The run's component of ``kind`` (built on first use), or ``None`` if not configured."""
        return self.trainer.component(kind)

    def build(self, choice: Choice, **extra: Any) -> Any:
        """Build a nested component from a :class:`Choice` (for example a stage's optimizer)."""
        return self.trainer.build(choice, **extra)


def resolve_device(name: str, world: distributed.World = distributed.SINGLE) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and world.active:
        return torch.device("cuda", world.local_rank)
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"run.device: {name!r} was asked for but no CUDA device is available")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Runs the schedule's phases step by step and fires the hooks.

    Build one with :meth:`from_config`; train with :meth:`fit`. Components are reachable as
    attributes (``trainer.task``, ``trainer.model``, ``trainer.optimizer``, ``trainer.precision``,
    ...) or with :meth:`component`.
    """

    # Components built up front, in this order; the rest are built when first asked for.
    BUILD_ORDER = ("precision", "task", "schedule", "offload", "dynamics")

    def __init__(
        self,
        config: Config,
        *,
        registry: Registry | None = None,
        plugins: Iterable[Any] = (),
    ):
        self.config = config
        self.registry = registry or load_registry()
        self.pm = self.registry.plugin_manager()
        register(self.pm, step_mod, "phasetrain.step", "the kernel's real step")
        self.guard = NonFiniteGuard()
        register(self.pm, self.guard, "phasetrain.guard", "the kernel's non-finite guard")
        self.fast = FastHooks(self.pm)
        for index, extra in enumerate(plugins):
            name = getattr(extra, "__name__", f"{type(extra).__name__}-{index}")
            register(self.pm, extra, f"extra:{name}", f"plugin {name!r}")
        self.fast.refresh()
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        dist_cfg = config.run.distributed
        self.world = distributed.setup(dist_cfg.backend, dist_cfg.timeout_s, config.run.device)
        seed_everything(config.run.seed + self.world.rank)
        self.device = resolve_device(config.run.device, self.world)
        self.out_dir = Path(config.run.out_dir)
        self.state = TrainState()
        self.phase: Phase | None = None
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.lr_schedulers: dict[str, Any] = {}
        self.last_eval: dict[str, Any] = {}
        self.stop_requested = False
        self.resumed_from: Path | None = None
        # Optimizer and learning-rate schedule state from a checkpoint, applied when each
        # optimizer is built (a stage's optimizer may not exist until its phase starts).
        self.pending_state: dict[str, dict[str, Any]] = {"optimizers": {}, "lr_schedulers": {}}
        self._components: dict[str, Any] = {}
        for kind in self.BUILD_ORDER:
            self.component(kind)
        self.model: torch.nn.Module = self.task.model
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        # The module the real step runs: DDP all-reduces gradients in its backward.
        self.train_model: torch.nn.Module = self.model
        if self.world.active:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
            if dist_cfg.check_every:
                register(self.pm, distributed.ConsistencyCheck(dist_cfg.check_every), "phasetrain.consistency",
                         "the kernel's cross-rank consistency check")
                self.fast.refresh()
        # Observers (logs, progress, files) run on rank 0 only.
        self.observers = {} if not self.world.main else {
            name: self._register(
                self._make("observer", name, observer.options), f"observer:{name}", "observer", name
            )
            for name, observer in config.observers.items()
            if observer.enabled
        }

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        source: Config | Mapping[str, Any] | str | Path,
        overrides: Iterable[str] = (),
        *,
        plugins: Iterable[PluginInfo | Any] = (),
    ) -> Trainer:
        """A Trainer from a :class:`Config`, a raw mapping, a preset name or a TOML/JSON path.

        ``plugins`` are extra plugin objects for this run (hook recorders, or components that
        are not installed: wrap those in :func:`phasetrain.registry.plugin` so that their
        ``phasetrain_components`` are registered too).
        """
        plugins = list(plugins)
        infos = [p for p in plugins if isinstance(p, PluginInfo)]
        registry = load_registry(infos)
        if isinstance(source, Config):
            config = source if not overrides else config_mod.build(
                source.to_dict(), overrides=overrides, source=source.source, registry=registry
            )
        elif isinstance(source, Mapping):
            config = config_mod.build(source, overrides=overrides, registry=registry)
        else:
            config = config_mod.load(source, overrides, registry=registry)
        hook_only = [p for p in plugins if not isinstance(p, PluginInfo)]
        return cls(config, registry=registry, plugins=hook_only)

    def _make(self, kind: str, name: str, options: Any, **extra: Any) -> Any:
        component = self.registry.get(kind, name)
        origin = self.registry.origin(kind, name)
        try:
            return component.factory(options, BuildContext(self, **extra))
        except PhasetrainError:
            raise
        except Exception as exc:
            raise PhasetrainError(
                f"{kind} {name!r} from {origin.distribution} failed to build: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def _register(self, obj: Any, key: str, kind: str, name: str) -> Any:
        if obj is not None and not self.pm.is_registered(obj):
            origin = self.registry.origin(kind, name)
            register(self.pm, obj, key, f"{kind} {name!r} from {origin.distribution}")
            self.fast.refresh()
        return obj

    def build(self, choice: Choice, **extra: Any) -> Any:
        """Build a component from ``choice`` and register it with this run's hooks."""
        obj = self._make(choice.kind, choice.use, choice.options, **extra)
        return self._register(obj, f"{choice.kind}:{choice.use}:{id(obj)}", choice.kind, choice.use)

    def component(self, kind: str) -> Any:
        """The run's component of ``kind``, built on first use; ``None`` if not configured."""
        if kind not in self._components:
            choice = self.config.section(kind)
            self._components[kind] = None if choice is None else self.build(choice)
        return self._components[kind]

    @property
    def task(self) -> Any:
        return self.component("task")

    @property
    def schedule(self) -> Any:
        return self.component("schedule")

    @property
    def precision(self) -> Any:
        return self.component("precision")

    @property
    def offload(self) -> Any:
        return self.component("offload")

    @property
    def dynamics(self) -> Any:
        return self.component("dynamics")

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer of the current phase."""
        return self.optimizers[self.phase.optimizer_key if self.phase else "main"]

    @property
    def lr_scheduler(self) -> Any:
        return self.lr_schedulers.get(self.phase.optimizer_key if self.phase else "main")

    def ensure_optimizer(self, phase: Phase) -> torch.optim.Optimizer:
        """Build ``phase``'s optimizer and learning-rate schedule the first time it is needed."""
        key = phase.optimizer_key
        if key not in self.optimizers:
            choice = phase.optimizer or self.config.optimizer
            opt = self.build(choice, params=self.trainable)
            self.optimizers[key] = opt
            lr_choice = phase.lr_schedule or (self.config.lr_schedule if key == "main" else None)
            if lr_choice is not None:
                steps = getattr(self.schedule, "steps_of", lambda _p: self.config.run.steps)(phase)
                self.lr_schedulers[key] = self.build(lr_choice, optimizer=opt, steps=steps)
            # Saved state goes in after both are built: a scheduler's constructor writes the
            # optimizer's learning rate, which the saved optimizer state must overrule.
            if key in self.pending_state["optimizers"]:
                opt.load_state_dict(self.pending_state["optimizers"].pop(key))
            if key in self.pending_state["lr_schedulers"] and key in self.lr_schedulers:
                self.lr_schedulers[key].load_state_dict(self.pending_state["lr_schedulers"].pop(key))
        return self.optimizers[key]

    def rebuild_optimizers(self) -> None:
        """Load pending saved state (after ``checkpoint.apply``) into optimizers already built."""
        for key, optimizer in self.optimizers.items():
            if key in self.pending_state["optimizers"]:
                optimizer.load_state_dict(self.pending_state["optimizers"].pop(key))
            if key in self.pending_state["lr_schedulers"] and key in self.lr_schedulers:
                self.lr_schedulers[key].load_state_dict(self.pending_state["lr_schedulers"].pop(key))

    # -- the loop -------------------------------------------------------------------------------

    def enter_phase(self, phase: Phase) -> None:
        previous = self.phase
        self.ensure_optimizer(phase)
        self.phase = phase
        self.state.phase = phase.name
        self.state.phase_step = 0
        self.pm.hook.phase_enter(trainer=self, phase=phase, previous=previous)

    def fit(self) -> Outcome:
        """Train until ``run.steps`` (or a stop request) and return how the run ended."""
        hook = self.pm.hook
        run = self.config.run
        schedule, model = self.schedule, self.model
        model.train()
        metrics: MutableMapping[str, Any] = {}
        status, error = "completed", ""
        started = time.perf_counter()
        elapsed_before = self.state.elapsed
        self._clock = (started, elapsed_before)
        hook.train_start(trainer=self)
        try:
            while self.state.step < run.steps and not self._should_stop(metrics):
                step = self.state.step
                phase = schedule.phase(self)
                if phase is not self.phase:
                    self.enter_phase(phase)
                fast = self.fast  # re-read: a phase entry may register new plugins
                fast.pre_step(trainer=self, step=step)
                metrics = fast.run_step(trainer=self, step=step, phase=phase)
                self.state.step = step + 1
                self.state.phase_step += 1
                fast.post_step(trainer=self, step=step, metrics=metrics)
                if run.eval_every and self.state.step % run.eval_every == 0:
                    self.evaluate()
                if run.checkpoint_every and self.state.step % run.checkpoint_every == 0:
                    self.save_checkpoint()
            if self.stop_requested:
                status = "interrupted"
            if not self.last_eval or self.last_eval.get("step") != self.state.step:
                self.evaluate()
            self.save_checkpoint()
        except PhasetrainError as exc:
            status, error = "failed", str(exc)
            raise
        except BaseException as exc:
            status, error = ("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"), (
                f"{type(exc).__name__}: {exc}"
            )
            raise
        finally:
            self.state.elapsed = elapsed_before + time.perf_counter() - started
            outcome = Outcome(
                status=status,
                steps=self.state.step,
                seconds=self.state.elapsed,
                metrics=step_mod.as_numbers(metrics),
                eval=dict(self.last_eval),
                error=error,
            )
            self.outcome = outcome
            hook.train_end(trainer=self, outcome=outcome)
        return outcome

    def _should_stop(self, metrics: Mapping[str, Any]) -> bool:
        # A signal may reach the ranks at different steps: they agree to stop at the same step.
        # Steps marked ``predicted`` communicate nothing, so the agreement waits for a real one.
        if self.world.active and not metrics.get("predicted"):
            self.stop_requested = distributed.any_rank(self.stop_requested, self.device)
        return self.stop_requested

    def evaluate(self) -> dict[str, Any]:
        """Evaluate the task now, fire ``eval_end``, and return the metrics."""
        self.model.eval()
        with torch.no_grad():
            results = dict(self.task.evaluate(self.model))
        self.model.train()
        results["step"] = self.state.step
        self.pm.hook.eval_end(trainer=self, step=self.state.step, metrics=results)
        self.last_eval = results
        return results

    def resume(self, report: Any = print) -> Path:
        """Continue from the latest good checkpoint of ``run.out_dir``.

        A bad checkpoint is reported and the previous good one used. A checkpoint whose config
        differs in anything but bookkeeping (steps, cadences, output, observers) is refused.
        """
        from phasetrain import checkpoint

        path, state, meta = checkpoint.latest_good(self.out_dir, report)
        differing = config_mod.incompatible_keys(meta["config"], self.config.to_dict())
        if differing:
            raise BadInput(
                f"cannot resume from {path}: the config differs in "
                + ", ".join(differing)
                + " (only run.steps, cadences, run.out_dir, run.device and observers may change)"
            )
        checkpoint.apply(self, state)
        self.resumed_from = path
        return path

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the whole run (see :mod:`phasetrain.checkpoint`)."""
        from phasetrain import checkpoint

        clock = getattr(self, "_clock", None)
        if clock is not None:  # checkpoints carry the training time so far, across resumes
            self.state.elapsed = clock[1] + time.perf_counter() - clock[0]
        return checkpoint.save(self)
