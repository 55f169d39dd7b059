"""The ``nowcast`` schedule: real training with occasional jumps ahead, judged after settling.

Rules (``NowcastController`` implements them over numbers only; tested under hypothesis):

1. In the jump stage (``stage``: the first stage by default), after ``start`` real steps, a
   window opens: a snapshot of the weights now and every ``every`` real steps, until the
   dynamics model's ``snapshots`` (K) are there.
2. **Jump**: at the next step, if it and ``settle_steps`` more fit in the stage, the probe loss
   ``L0`` is measured (several held-out batches), the dynamics model nowcasts the weights
   ``ahead`` spacings on (``ahead x every`` steps) and the weights move there in place. The
   step itself is then an ordinary real step from the new weights: the learning-rate schedule
   steps once, for it, never for the jump. With ``moments = "scale"`` the optimizer's first
   moments (Adam's ``exp_avg``, SGD's momentum) are multiplied by ``moment_scale``.
3. **Settle**: ``settle_steps`` real steps let the optimizer repair the jump.
4. **Judge**: the probe loss ``L1`` on the same batches against the forecast of no jump, ``L0``
   moved by the trend of the window's training losses over the same number of steps (a
   Theil-Sen slope of the log loss, robust to spikes). Kept when ``L1 <= forecast +
   tolerance x |forecast|``: ``ahead`` grows (x ``grow``, at most ``max_ahead``). Otherwise the
   whole run goes back to the state before the jump (weights, optimizer, learning-rate
   schedule, data position, random streams: the loop applies the rollback) and continues as
   plain training would have; ``ahead`` halves, and when it falls below 1 no more jumps are
   tried for the rest of the run (no snapshots, no probes: plain training, bit for bit).
   Either way a new window opens at the current weights.

A task where prediction never pays thus costs at most a few probes and ``log2(ahead) + 1``
rolled-back settles. docs/hybrid.md gives the method, the benchmark and its results.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import attrs
import torch

from phasetrain import hookimpl
from phasetrain.config import at_least, non_negative, one_of, positive
from phasetrain.errors import BadInput, ConfigError
from phasetrain.plugins.hybrid.dynamics import Nowcaster
from phasetrain.plugins.hybrid.probe import probe_batches, probe_loss
from phasetrain.plugins.schedules import Staged, StagedOptions
from phasetrain.types import Phase

FIRST_MOMENTS = ("exp_avg", "momentum_buffer")  # Adam/AdamW, SGD: the keys "scale" multiplies


@attrs.define
class NowcastOptions(StagedOptions):
    stage: str = ""  # the stage whose steps may jump ("": the first); it must use the run's [optimizer]
    start: int = attrs.field(default=100, validator=non_negative)  # real steps of the stage before the first window
    every: int = attrs.field(default=20, validator=positive)  # real steps between snapshots
    ahead: float = attrs.field(default=2.0, validator=non_negative)  # first jump: this many spacings ahead (< 1: never)
    max_ahead: float = attrs.field(default=8.0, validator=at_least(1.0))
    grow: float = attrs.field(default=2.0, validator=at_least(1.0))  # ahead x this after a kept jump
    settle_steps: int = attrs.field(default=20, validator=positive)  # real steps before a jump is judged
    tolerance: float = attrs.field(default=0.0, validator=non_negative)  # relative, above the no-jump forecast
    probe_batches: int = attrs.field(default=4, validator=positive)  # held-out batches a probe averages
    moments: str = attrs.field(default="keep", validator=one_of("keep", "scale"))  # optimizer moments at a jump
    moment_scale: float = attrs.field(default=0.5, validator=non_negative)  # first moments x this ("scale")


def theil_sen(values: list[float]) -> float:
    """The median slope over all pairs of ``values`` (per index), a line fit that a few
    spikes do not move; at most 256 evenly spaced values are used."""
    n = len(values)
    if n < 2:
        return 0.0
    idx = torch.linspace(0, n - 1, min(n, 256)).round().long().unique()
    y = torch.tensor(values, dtype=torch.float64)[idx]
    x = idx.double()
    i, j = torch.triu_indices(len(idx), len(idx), offset=1)
    return float(((y[j] - y[i]) / (x[j] - x[i])).median())


@attrs.define
class NowcastController:
    """The jump rules as a state machine over numbers only (see the module docstring)."""

    options: NowcastOptions
    snapshots: int = 2  # K, set from the dynamics model before the run starts
    phase: str = "train"  # "train", "jump" or "settle"
    phase_step: int = 0
    ahead: float = 0.0
    stopped: bool = False  # no more jumps in this run
    since: int = -1  # real steps since the window opened (-1: not open)
    taken: int = 0  # snapshots in the window, at most K
    losses: list[float] = attrs.field(factory=list)  # training losses of the window's real steps
    jumps: int = 0
    kept: int = 0

    def __attrs_post_init__(self) -> None:
        self.ahead = self.options.ahead
        self.stopped = self.ahead < 1

    def next_phase(self, step: int, end: int) -> str:
        """The phase of step ``step`` (0-based) of the jump stage, which ends before ``end``."""
        new = self.phase
        if self.phase == "jump":
            new = "settle"
        elif self.phase == "settle":
            if self.phase_step >= self.options.settle_steps:
                new = "train"
        elif not self.stopped and self.taken >= self.snapshots and step + 1 + self.options.settle_steps <= end:
            new = "jump"
        if new != self.phase:
            self.phase, self.phase_step = new, 0
        return self.phase

    def stepped(self) -> None:
        self.phase_step += 1

    def observe(self, loss: float, stage_steps: int) -> bool:
        """After a real step of the ``train`` phase (the stage's ``stage_steps``-th): True when a
        snapshot is due now."""
        if self.stopped:
            return False
        if self.since < 0:
            if stage_steps < self.options.start:
                return False
            self.open()
            return True
        self.since += 1
        self.losses.append(loss)
        if self.since % self.options.every:
            return False
        self.taken = min(self.snapshots, self.taken + 1)
        del self.losses[: -(self.snapshots - 1) * self.options.every]
        return True

    def open(self) -> None:
        """A new window, whose first snapshot is the current weights."""
        self.since, self.taken, self.losses = 0, 1, []

    def forecast(self, probe: float) -> float:
        """The probe loss expected after the jump's step and ``settle_steps`` more real steps had
        there been no jump: ``probe`` moved by the window's trend."""
        n = self.options.settle_steps + 1
        losses = [x for x in self.losses if math.isfinite(x)]
        if losses and min(losses) > 0:
            return probe * math.exp(theil_sen([math.log(x) for x in losses]) * n)
        return probe + theil_sen(losses) * n

    def judge(self, probe: float, forecast: float) -> bool:
        """After settling: True when the jump is kept (see the module docstring)."""
        o = self.options
        kept = math.isfinite(probe) and probe <= forecast + o.tolerance * abs(forecast)
        self.jumps += 1
        if kept:
            self.kept += 1
            self.ahead = min(o.max_ahead, self.ahead * o.grow)
        else:
            self.ahead /= 2
            self.stopped = self.ahead < 1
        if self.stopped:
            self.since, self.taken, self.losses = -1, 0, []
        else:
            self.open()
        return kept

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in attrs.asdict(self, recurse=False).items() if k != "options"}
        state["losses"] = list(self.losses)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, list(value) if key == "losses" else value)


class Nowcast(Staged):
    """The schedule component: stages as ``staged``, with jumps in one of them."""

    def __init__(self, options: NowcastOptions, ctx: Any):
        super().__init__(options, ctx)
        self.options = options
        names = [s.name for s in options.stages]
        source = ctx.config.source
        if clash := {"jump", "settle"} & set(names):
            raise ConfigError(source, "schedule.stages", f"a stage may not be called {sorted(clash)[0]!r} under "
                              "nowcast (the name of its own phases)")
        stage_name = options.stage or names[0]
        if stage_name not in names:
            raise ConfigError(source, "schedule.stage", f"no stage named {stage_name!r} (stages: {', '.join(names)})")
        index = names.index(stage_name)
        stage = options.stages[index]
        if stage.optimizer is not None:
            raise ConfigError(source, "schedule.stage", f"stage {stage_name!r} has its own optimizer; jumps need a "
                              "stage that uses the run's [optimizer], whose state the jump's phases share")
        if ctx.config.section("dynamics") is None:
            raise BadInput('schedule "nowcast" needs a [dynamics] section, e.g. use = "linefit"')
        self.stage = self.phases[index]
        self.begin, self.end = (self.ends[index - 1] if index else 0), self.ends[index]
        self.jump = Phase("jump", None, stage.lr_schedule)
        self.settle = Phase("settle", None, stage.lr_schedule)
        self.phases = [*self.phases, self.jump, self.settle]
        self._lengths["jump"] = self._lengths["settle"] = self._lengths[stage_name]
        self.controller = NowcastController(options)
        self.ctx = ctx
        self.history: list[list[torch.Tensor]] = []  # the window's snapshots, oldest first
        self.saved: dict[str, Any] | None = None  # the run's state before the jump being settled
        self.reference = float("nan")  # probe loss before the jump
        self.expected = float("nan")  # its forecast without the jump
        self._probe: list[Any] | None = None  # the probe's batches for this jump (the same at judgement)
        self.rollbacks = 0
        self.probes = 0

    @property
    def dynamics(self) -> Any:
        return self.ctx.component("dynamics")

    def phase(self, trainer: Any) -> Phase:
        base = super().phase(trainer)
        if base is not self.stage:
            return base
        name = self.controller.next_phase(trainer.state.step, self.end)
        return self.stage if name == "train" else self.jump if name == "jump" else self.settle

    @hookimpl
    def train_start(self, trainer: Any) -> None:
        dynamics = self.dynamics
        if not isinstance(dynamics, Nowcaster):
            name = self.ctx.config.section("dynamics").use
            raise BadInput(f'schedule "nowcast" needs a [dynamics] model that nowcasts from snapshots, such as '
                           f'"linefit" or "nowcaster"; {name!r} predicts single steps only (use it with "hybrid")')
        self.controller.snapshots = dynamics.snapshots

    # -- probing ------------------------------------------------------------------------------

    def _probe_loss(self, trainer: Any) -> float:
        if self._probe is None:  # e.g. resumed while settling: the same batches, fetched again
            self._probe = probe_batches(trainer, self.options.probe_batches)
        self.probes += 1
        return probe_loss(trainer, self._probe)

    # -- the jump --------------------------------------------------------------------------

    @hookimpl
    def phase_enter(self, trainer: Any, phase: Phase) -> None:
        if phase is self.jump:  # between steps: what a failed jump goes back to
            state = trainer.state_dict()
            state["plugins"].pop("nowcast", None)
            self.saved = copy.deepcopy(state)

    @hookimpl
    def run_step(self, trainer: Any, phase: Phase) -> None:
        """At the jump's step, move the weights; returning None lets the real step run from there."""
        if phase is not self.jump:
            return None
        c = self.controller
        self._probe = None
        self.reference = self._probe_loss(trainer)
        self.expected = c.forecast(self.reference)
        with torch.no_grad():
            torch._foreach_add_(trainer.trainable, self.dynamics.nowcast(self.history, c.ahead))
            if self.options.moments == "scale":
                for state in trainer.optimizer.state.values():
                    for key in FIRST_MOMENTS:
                        if isinstance(value := state.get(key), torch.Tensor):
                            value.mul_(self.options.moment_scale)
        return None

    @hookimpl(tryfirst=True)
    def post_step(self, trainer: Any, step: int, metrics: dict[str, Any]) -> None:
        c = self.controller
        c.stepped()
        phase = trainer.phase
        if phase is self.stage and not c.stopped:
            if c.observe(float(metrics["loss"]), step + 1 - self.begin):
                self.history = [*self.history, [p.detach().clone() for p in trainer.trainable]][-c.snapshots:]
        elif phase is self.settle and c.phase_step >= self.options.settle_steps:
            self._judge(trainer, step)
        metrics["jumps"], metrics["jumps_kept"], metrics["ahead"] = c.jumps, c.kept, c.ahead

    def _judge(self, trainer: Any, step: int) -> None:
        c = self.controller
        loss, ahead = self._probe_loss(trainer), c.ahead
        kept = c.judge(loss, self.expected)
        fields = {"probe_loss": loss, "forecast": self.expected, "reference": self.reference, "ahead": ahead,
                  "kept": int(kept), "jumps": c.jumps}
        if kept:
            self.history = [] if c.stopped else [[p.detach().clone() for p in trainer.trainable]]
            message = (f"nowcast: jump of {ahead:g} x {self.options.every} steps kept, probe loss {loss:.4g} "
                       f"against {self.expected:.4g} forecast without it")
        else:
            self.history = [] if c.stopped else self.history[-1:]  # the weights the run goes back to
            self.rollbacks += 1
            state, self.saved = self.saved, None
            state["plugins"]["nowcast"] = self._state()
            trainer.request_rollback(state)
            message = (f"nowcast: jump of {ahead:g} x {self.options.every} steps rolled back, probe loss {loss:.4g} "
                       f"against {self.expected:.4g} forecast without it"
                       + ("; no more jumps in this run" if c.stopped else ""))
        self.saved, self._probe = None, None
        trainer.pm.hook.event(trainer=trainer, step=step + 1, name="jump_kept" if kept else "jump_rolled_back",
                              message=f"{message} (step {step + 1})", fields=fields)

    # -- state -------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {"controller": self.controller.state_dict(), "history": self.history, "saved": self.saved,
                "reference": self.reference, "expected": self.expected, "rollbacks": self.rollbacks,
                "probes": self.probes}

    @hookimpl
    def checkpoint(self, state: dict[str, Any]) -> None:
        state["nowcast"] = self._state()

    @hookimpl
    def restore(self, state: dict[str, Any]) -> None:
        s = state.get("nowcast")
        if not s:
            return
        self.controller.load_state_dict(dict(s["controller"]))
        self.history = [list(h) for h in s["history"]]
        self.saved, self.reference, self.expected = s["saved"], s["reference"], s["expected"]
        self.rollbacks, self.probes = s["rollbacks"], s["probes"]
        self._probe = None
