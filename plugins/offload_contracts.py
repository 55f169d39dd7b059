"""Contracts of offload strategies (``offload.*``).

The strategy runs in a staged schedule ``warm -> P -> after`` whose phase ``P`` takes no
optimizer step (as Predict does), where ``P`` is the phase it offloads in: the first of its
options' ``phases`` (phasetrain's convention), ``settings.phase``, or ``"predict"``. Each example
checks a real run (Adam's state through the loop) and the same phase changes fired on an
optimizer whose state was drawn by :func:`~phasetrain.testing.strategies.optimizer_states`
(every dtype, empty, non-contiguous and non-finite tensors, nested lists and tuples).

- ``offload.identity``: the optimizer state after ``P`` is the state before ``P``, bit for bit,
  on the same devices;
- ``offload.nothing_left_on_device``: while offloaded, no optimizer state tensor is on an
  accelerator, and on CUDA the device memory the state held is free. On a CPU-only run the
  device *is* the host, so only the first half means anything; run with ``device="cuda"``.
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis.errors import HypothesisException

from phasetrain import hookimpl
from phasetrain.testing import strategies
from phasetrain.testing.bits import differences, tensors, tree_map
from phasetrain.testing.contract import context, contract
from phasetrain.testing.violation import ContractViolation


class NoOptimizerStep:
    """Answers ``run_step`` in one phase with a forward-only loss and no optimizer step, as the
    hybrid schedule's predicted steps do: the optimizer's state must survive that phase."""

    def __init__(self, phase: str):
        self.phase = phase

    @hookimpl
    def run_step(self, trainer: Any, phase: Any, batches: Any) -> dict[str, Any] | None:
        if phase.name != self.phase:
            return None
        with torch.no_grad(), trainer.precision.autocast():
            loss = trainer.task.loss(trainer.model, batches[0])
        return {"loss": loss.detach(), "lr": trainer.optimizer.param_groups[0]["lr"]}


def offload_phase(subject: Any, options: Any) -> str:
    """The phase the strategy offloads in: ``settings.phase``, its first ``phases``, or predict."""
    phases = getattr(options, "phases", None)
    if subject.settings.phase:
        return subject.settings.phase
    if isinstance(phases, (list, tuple)) and phases and isinstance(phases[0], str):
        return phases[0]
    return "predict"


def _staged(subject: Any, options: Any, steps: int) -> dict[str, Any]:
    offloaded = offload_phase(subject, options)
    taken = {offloaded, *(p for p in getattr(options, "phases", None) or () if isinstance(p, str))}

    def free(base: str) -> str:
        name, i = base, 0
        while name in taken:
            i += 1
            name = f"{base}{i}"
        taken.add(name)
        return name

    third = max(1, steps // 3)
    return {"use": "staged", "stages": [
        {"name": free("warm"), "steps": third}, {"name": offloaded, "steps": third}, {"name": free("after")},
    ]}


@context("offload", hooks=lambda subject, options: [NoOptimizerStep(offload_phase(subject, options))])
def _offload_context(subject: Any, options: Any, raw: dict[str, Any]) -> None:
    raw["schedule"] = _staged(subject, options, raw["run"]["steps"])


def _state(trainer: Any) -> dict[str, Any]:
    return {key: opt.state_dict()["state"] for key, opt in trainer.optimizers.items()}


def _snapshot(trainer: Any) -> Any:
    """Every optimizer's state as (device type, host copy) pairs: no device memory is used."""
    return tree_map(_state(trainer), lambda t: (t.device.type, t.detach().to("cpu", copy=True)))


def _allocated(trainer: Any) -> int | None:
    device = trainer.device
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None


class Probe:
    """What the optimizer state looked like around the offloaded phase."""

    def __init__(self, phase: str):
        self.phase = phase
        self.entering: Any = None  # snapshot before the strategy acts (phase_enter, tryfirst)
        self.leaving: Any = None  # snapshot after it gave the state back (phase_enter, trylast)
        self.on_device: list[str] = []  # state tensors found on an accelerator while offloaded
        self.device_bytes = 0  # bytes of state on the device when the phase began
        self.allocated_before: int | None = None
        self.allocated_during: list[int] = []
        self.crash: Exception | None = None  # the run failed after the probe's observations

    def offloaded_now(self, trainer: Any, where: str, measure: bool) -> None:
        for key, state in _state(trainer).items():
            for t in tensors(state):
                if t.device.type != "cpu":
                    self.on_device.append(f"{where}: optimizer {key!r} holds a {tuple(t.shape)} {t.dtype} tensor on {t.device}")
        allocated = _allocated(trainer) if measure else None
        if allocated is not None:  # measured at the phase's start: later, a prefetch may be under way
            self.allocated_during.append(allocated)


class _Before:
    def __init__(self, probe: Probe):
        self.probe = probe

    @hookimpl(tryfirst=True)
    def phase_enter(self, trainer: Any, phase: Any) -> None:
        if phase.name == self.probe.phase:
            self.probe.allocated_before = _allocated(trainer)
            self.probe.device_bytes = sum(
                t.numel() * t.element_size() for t in tensors(_state(trainer)) if t.device.type != "cpu"
            )
            self.probe.entering = _snapshot(trainer)


class _After:
    def __init__(self, probe: Probe):
        self.probe = probe

    @hookimpl(trylast=True)
    def phase_enter(self, trainer: Any, phase: Any, previous: Any) -> None:
        if phase.name == self.probe.phase:
            self.probe.offloaded_now(trainer, f"entering {phase.name!r}", measure=True)
        elif previous is not None and previous.name == self.probe.phase:
            self.probe.leaving = _snapshot(trainer)

    @hookimpl(trylast=True)
    def pre_step(self, trainer: Any, step: int) -> None:
        if trainer.phase is not None and trainer.phase.name == self.probe.phase and self.probe.leaving is None:
            self.probe.offloaded_now(trainer, f"step {step}", measure=False)


def _observe(subject: Any, data: Any) -> list[tuple[str, Probe]]:
    """Probes of one real run and of one run of phase changes on a drawn optimizer state."""
    options = data.draw(subject.options(small=True), label="options")
    phase = offload_phase(subject, options)
    run_probe = Probe(phase)
    trainer = subject.trainer(options, hooks=[_Before(run_probe), _After(run_probe)])
    try:
        subject.fit(trainer, options)
    except (ContractViolation, HypothesisException):
        raise
    except Exception as exc:  # reported after what the probe saw, which usually explains it
        run_probe.crash = exc
    found = [(f"a run through {phase!r} with options {options!r}", run_probe)]

    drawn = data.draw(strategies.optimizer_states(), label="optimizer state")
    probe = Probe(phase)
    trainer = subject.trainer(options, hooks=[_Before(probe), _After(probe)])
    phases = getattr(trainer.schedule, "phases", None)
    if isinstance(phases, list) and len(phases) == 3:
        warm, offloaded, after = phases
        trainer.enter_phase(warm)
        optimizer = trainer.optimizers["main"]
        for param, state in zip(trainer.trainable, drawn):
            optimizer.state[param] = tree_map(state, lambda t: t.to(trainer.device))
        trainer.enter_phase(offloaded)
        trainer.enter_phase(after)
        found.append((f"phase changes over a drawn optimizer state, options {options!r}", probe))
    return found


@contract("offload.identity", "offload", examples=4)
def identity(subject: Any, data: Any) -> None:
    """Offload then restore gives back the optimizer state bit for bit, on the same devices."""
    for what, probe in _observe(subject, data):
        if probe.entering is None or probe.leaving is None:
            _crashed(subject, what, probe)
            subject.fail(f"{what}: the context never went into and out of phase {probe.phase!r}")
        diff = differences(probe.entering, probe.leaving, "optimizers", volatile=())
        if diff:
            subject.fail(f"{what}: the optimizer state after phase {probe.phase!r} is not the state "
                         "before it:\n  " + "\n  ".join(diff))
        _crashed(subject, what, probe)


def _crashed(subject: Any, what: str, probe: Probe) -> None:
    if probe.crash is not None:
        subject.fail(f"{what}: the run failed after phase {probe.phase!r}: "
                     f"{type(probe.crash).__name__}: {probe.crash}")


def _expects_offload(subject: Any) -> str | None:
    options = subject.default_options()
    if subject.settings.phase is None and not getattr(options, "phases", None):
        return "its options list no phases, so it keeps optimizer state where it is"
    return None


@contract("offload.nothing_left_on_device", "offload", examples=4, applies=_expects_offload)
def nothing_left_on_device(subject: Any, data: Any) -> None:
    """While offloaded, no optimizer state is on an accelerator and its device memory is free."""
    for what, probe in _observe(subject, data):
        if probe.on_device:
            subject.fail(f"{what}: while offloaded, " + "; ".join(probe.on_device[:3]))
        if probe.allocated_before is not None and probe.allocated_during:
            limit = probe.allocated_before - probe.device_bytes
            worst = max(probe.allocated_during)
            if worst > limit:
                subject.fail(f"{what}: while offloaded, {worst} bytes of device memory are allocated; the "
                             f"state's {probe.device_bytes} bytes should have left "
                             f"{probe.allocated_before} - {probe.device_bytes} = {limit}")
        _crashed(subject, what, probe)
