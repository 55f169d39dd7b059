"""Contracts of optimizers (``optimizer.*``), checked on convex quadratics with known minima.

- ``optimizer.lowers_quadratic``: with its default options, one step on a quadratic lowers the
  loss, and a few more steps keep it below where it started.
- ``optimizer.state_round_trip``: ``state_dict()`` saved the way checkpoints save it and loaded
  into a fresh optimizer gives the same state, bit for bit, and the same next step.
- ``optimizer.closure``: ``step(closure)`` (how the kernel's step always calls an optimizer)
  evaluates the closure and returns the loss of its first evaluation; an optimizer that declares
  ``requires_closure = True`` makes progress with the closure alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from hypothesis import strategies as st

from phasetrain.testing import strategies
from phasetrain.testing.bits import differences, through_checkpoint
from phasetrain.testing.contract import contract

FOLLOW_UP_STEPS = 4


def _optimizer(subject: Any, trainer: Any, options: Any, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return subject.rebuild(trainer, options, params=params)


def _closure(optimizer: torch.optim.Optimizer, quadratic: strategies.Quadratic, params: list[torch.Tensor],
             calls: list[torch.Tensor] | None = None) -> Callable[[], torch.Tensor]:
    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = quadratic.loss(params)
        loss.backward()
        if calls is not None:
            calls.append(loss.detach().clone())
        return loss.detach()

    return closure


def _loss(quadratic: strategies.Quadratic, params: list[torch.Tensor]) -> float:
    with torch.no_grad():
        return float(quadratic.loss(params))


@contract("optimizer.lowers_quadratic", "optimizer", examples=10)
def lowers_quadratic(subject: Any, data: Any) -> None:
    """A step with the default options lowers a convex quadratic's loss."""
    quadratic = data.draw(strategies.quadratics(), label="quadratic")
    options = subject.default_options()
    trainer = subject.context_trainer()
    params = quadratic.parameters()
    optimizer = _optimizer(subject, trainer, options, params)
    closure = _closure(optimizer, quadratic, params)
    before = _loss(quadratic, params)
    optimizer.step(closure)
    after = _loss(quadratic, params)
    if not after < before:
        subject.fail(f"one step with the default options {options!r} did not lower a quadratic's loss "
                     f"({before!r} -> {after!r})")
    for _ in range(FOLLOW_UP_STEPS):
        optimizer.step(closure)
    later = _loss(quadratic, params)
    if not later < before:
        subject.fail(f"after {FOLLOW_UP_STEPS + 1} steps with the default options the quadratic's loss "
                     f"is {later!r}, not below its start {before!r}")


@contract("optimizer.state_round_trip", "optimizer", examples=10)
def state_round_trip(subject: Any, data: Any) -> None:
    """state_dict -> checkpoint -> load_state_dict into a fresh optimizer changes nothing."""
    options = data.draw(subject.options(small=True), label="options")
    quadratic = data.draw(strategies.quadratics(), label="quadratic")
    steps = data.draw(st.integers(1, 3), label="steps before saving")
    trainer = subject.context_trainer()
    params = quadratic.parameters()
    first = _optimizer(subject, trainer, options, params)
    for _ in range(steps):
        first.step(_closure(first, quadratic, params))
    saved = first.state_dict()
    after = f"after {steps} step{'s' if steps > 1 else ''}"
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    second = _optimizer(subject, trainer, options, copies)
    second.load_state_dict(through_checkpoint(saved))
    diff = differences(saved, second.state_dict(), "state_dict")
    if diff:
        subject.fail(f"{after}, a fresh optimizer that loaded the state_dict holds another "
                     "state:\n  " + "\n  ".join(diff))
    first.step(_closure(first, quadratic, params))
    second.step(_closure(second, quadratic, copies))
    diff = differences(list(params), list(copies), "parameters")
    diff += differences(first.state_dict(), second.state_dict(), "state_dict")
    if diff:
        subject.fail(f"{after} and a round trip of the state, the next step differs:\n  "
                     + "\n  ".join(diff))


@contract("optimizer.closure", "optimizer", examples=10)
def closure_protocol(subject: Any, data: Any) -> None:
    """step(closure) evaluates the closure and returns its first loss (the step's reported loss)."""
    options = data.draw(subject.options(small=True), label="options")
    quadratic = data.draw(strategies.quadratics(), label="quadratic")
    trainer = subject.context_trainer()
    params = quadratic.parameters()
    optimizer = _optimizer(subject, trainer, options, params)
    calls: list[torch.Tensor] = []
    returned = optimizer.step(_closure(optimizer, quadratic, params, calls))
    if not calls:
        subject.fail("step(closure) never called the closure, so no gradient was computed for the step")
    if not isinstance(returned, torch.Tensor):
        subject.fail(f"step(closure) returned {returned!r}; the kernel reports what it returns as the "
                     "step's loss, so it must return the closure's loss")
    if not torch.equal(returned.detach().to(calls[0].dtype), calls[0]):
        subject.fail(f"step(closure) returned {returned!r}, not the loss of the closure's first call "
                     f"{calls[0]!r}")
    if getattr(optimizer, "requires_closure", False) and options == subject.default_options():
        before = float(calls[0])
        after = _loss(quadratic, params)
        if not after < before:
            subject.fail(f"declares requires_closure, but a step with the closure did not lower the "
                         f"loss ({before!r} -> {after!r})")
