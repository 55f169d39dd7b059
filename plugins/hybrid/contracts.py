"""Contracts of dynamics models (``dynamics.*``), driven through their protocol (see
``phasetrain.plugins.hybrid.dynamics``) by drawn training trajectories
(:func:`~phasetrain.testing.strategies.trajectories`): real steps to ``observe``, ``rebase``
after weights moved otherwise, ``penalize`` after a rollback.

- ``dynamics.predictions``: ``predict(params, lr)`` gives one finite tensor per parameter, with
  its shape, dtype and device, at every point of the trajectory; ``predicted_loss(k)`` is a
  finite number once a step has been observed;
- ``dynamics.confidence``: ``confidence`` is a number in [0, 1] at every point;
- ``dynamics.state_round_trip``: ``state_dict()`` saved the way checkpoints save it and loaded
  into a fresh model gives the same state and the same predictions, now and after observing the
  rest of the trajectory;
- ``dynamics.nowcast`` (models that are also a ``Nowcaster``): for a history of snapshots along a
  drawn trajectory, ``nowcast(history, ahead)`` gives finite tensors shaped like the parameters,
  leaves the history untouched and gives the same answer twice; for a history that did not move
  it predicts no move.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from hypothesis import strategies as st

from phasetrain.plugins.hybrid.dynamics import Nowcaster
from phasetrain.testing import strategies
from phasetrain.testing.bits import differences, through_checkpoint
from phasetrain.testing.contract import context, contract

HYBRID = {
    "use": "hybrid", "warmup_steps": 2, "min_full_steps": 1, "confidence_threshold": 0.0,
    "initial_predict_steps": 2, "max_predict_steps": 4, "loss_check_every": 1, "correct_steps": 2,
}


@context("dynamics")
def _dynamics_context(subject: Any, options: Any, raw: dict[str, Any]) -> None:
    raw["schedule"] = dict(HYBRID)


def _setup(subject: Any, data: Any) -> tuple[Any, Any, Any, list[torch.Tensor], list[strategies.TrajectoryStep]]:
    options = data.draw(subject.options(small=True), label="options")
    trainer = subject.context_trainer()
    model = subject.rebuild(trainer, options)
    params = [p.detach().clone() for p in trainer.trainable]
    trajectory = data.draw(strategies.trajectories(params), label="trajectory")
    return options, trainer, model, params, trajectory


def _apply(model: Any, params: list[torch.Tensor], step: strategies.TrajectoryStep) -> None:
    with torch.no_grad():
        for p, d in zip(params, step.delta):
            p.add_(d)
    if step.event == "observe":
        model.observe(params, step.loss, step.lr)
    elif step.event == "rebase":
        model.rebase(params)
    else:
        model.penalize(0.5)


def _walk(model: Any, params: list[torch.Tensor], trajectory: Sequence[strategies.TrajectoryStep],
          check: Callable[[int, strategies.TrajectoryStep], None]) -> None:
    check(-1, trajectory[0])
    for index, step in enumerate(trajectory):
        _apply(model, params, step)
        check(index, step)


@contract("dynamics.predictions", "dynamics", examples=8)
def predictions(subject: Any, data: Any) -> None:
    """Predicted deltas have the parameters' shapes, dtypes and devices and are finite."""
    _options, _trainer, model, params, trajectory = _setup(subject, data)
    observed = 0

    def check(index: int, step: strategies.TrajectoryStep) -> None:
        nonlocal observed
        where = "before any step" if index < 0 else f"after event {index} ({step.event})"
        observed += index >= 0 and step.event == "observe"
        delta = model.predict(params, step.lr)
        if len(delta) != len(params):
            subject.fail(f"{where}: predict gave {len(delta)} tensors for {len(params)} parameters")
        for i, (d, p) in enumerate(zip(delta, params)):
            if not isinstance(d, torch.Tensor):
                subject.fail(f"{where}: predict gave a {type(d).__name__} for parameter {i}")
            if (d.shape, d.dtype, d.device) != (p.shape, p.dtype, p.device):
                subject.fail(f"{where}: the delta of parameter {i} is {tuple(d.shape)} {d.dtype} on {d.device}; "
                             f"the parameter is {tuple(p.shape)} {p.dtype} on {p.device}")
            if not bool(torch.isfinite(d).all()):
                subject.fail(f"{where}: the delta of parameter {i} is not finite")
        if observed:
            for k in (1, 2, 4):
                loss = model.predicted_loss(k)
                if not isinstance(loss, (int, float)) or not math.isfinite(loss):
                    subject.fail(f"{where}: predicted_loss({k}) is {loss!r}, not a finite number")

    _walk(model, params, trajectory, check)


@contract("dynamics.confidence", "dynamics", examples=8)
def confidence(subject: Any, data: Any) -> None:
    """Confidence is a number in [0, 1] before, during and after a trajectory."""
    _options, _trainer, model, params, trajectory = _setup(subject, data)

    def check(index: int, step: strategies.TrajectoryStep) -> None:
        value = model.confidence
        if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            where = "before any step" if index < 0 else f"after event {index} ({step.event})"
            subject.fail(f"{where}: confidence is {value!r}, not a number in [0, 1]")

    _walk(model, params, trajectory, check)


@contract("dynamics.state_round_trip", "dynamics", examples=6)
def state_round_trip(subject: Any, data: Any) -> None:
    """state_dict -> checkpoint -> load_state_dict gives the same state and the same predictions."""
    options, trainer, model, params, trajectory = _setup(subject, data)
    cut = data.draw(st.integers(0, len(trajectory)), label="saved after")
    for step in trajectory[:cut]:
        _apply(model, params, step)
    saved = model.state_dict()
    fresh = subject.rebuild(trainer, options)
    fresh.load_state_dict(through_checkpoint(saved))
    twin = [p.clone() for p in params]
    diff = differences(saved, fresh.state_dict(), "state_dict")
    if diff:
        subject.fail(f"saved after {cut} events, a fresh model that loaded the state holds another "
                     "state:\n  " + "\n  ".join(diff))
    lr = trajectory[min(cut, len(trajectory) - 1)].lr
    for index in range(cut, len(trajectory) + 1):
        diff = differences(list(model.predict(params, lr)), list(fresh.predict(twin, lr)), "predict")
        diff += differences(model.confidence, fresh.confidence, "confidence")
        if diff:
            subject.fail(f"saved after {cut} events, the reloaded model predicts differently "
                         f"{index - cut} events later:\n  " + "\n  ".join(diff))
        if index < len(trajectory):
            _apply(model, params, trajectory[index])
            _apply(fresh, twin, trajectory[index])
            lr = trajectory[index].lr


def _not_a_nowcaster(subject: Any) -> str | None:
    model = subject.rebuild(subject.context_trainer(), subject.default_options())
    return None if isinstance(model, Nowcaster) else "not a Nowcaster: it predicts single steps only"


@contract("dynamics.nowcast", "dynamics", examples=8, applies=_not_a_nowcaster)
def nowcast(subject: Any, data: Any) -> None:
    """nowcast(history, ahead) is finite, shaped like the parameters, pure, and still for a still history."""
    _options, _trainer, model, params, trajectory = _setup(subject, data)
    k = model.snapshots
    history = [[p.clone() for p in params]]
    for step in trajectory:
        history.append([h + d for h, d in zip(history[-1], step.delta, strict=True)])
    while len(history) < k:
        history.append([h + d for h, d in zip(history[-1], trajectory[-1].delta, strict=True)])
    history = history[-k:]
    kept = [[h.clone() for h in snap] for snap in history]
    ahead = data.draw(st.floats(0.0, 16.0), label="ahead")
    first = model.nowcast(history, ahead)
    if len(first) != len(params):
        subject.fail(f"nowcast gave {len(first)} tensors for {len(params)} parameters")
    for i, (d, p) in enumerate(zip(first, params)):
        if (d.shape, d.dtype, d.device) != (p.shape, p.dtype, p.device):
            subject.fail(f"nowcast({ahead}): the displacement of parameter {i} is {tuple(d.shape)} {d.dtype} on "
                         f"{d.device}; the parameter is {tuple(p.shape)} {p.dtype} on {p.device}")
        if not bool(torch.isfinite(d).all()):
            subject.fail(f"nowcast({ahead}): the displacement of parameter {i} is not finite")
    if diff := differences(kept, history, "history"):
        subject.fail("nowcast changed the history it was given:\n  " + "\n  ".join(diff))
    if diff := differences(first, model.nowcast(history, ahead), "nowcast"):
        subject.fail(f"nowcast({ahead}) gave another answer the second time:\n  " + "\n  ".join(diff))
    still = [[p.clone() for p in params] for _ in range(k)]
    moved = [float(d.abs().max()) if d.numel() else 0.0 for d in model.nowcast(still, ahead)]
    if any(m != 0.0 for m in moved):
        subject.fail(f"nowcast({ahead}) of a history that did not move moves the weights (by up to {max(moved):.3g})")
