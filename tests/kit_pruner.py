"""Conformance-kit contracts of the test suite's third-party ``pruner`` kind (tests/test_open_kernel.py):
declared the way a plugin author declares them, and found through ``Kind.contracts``."""

from __future__ import annotations

import math
from typing import Any

from phasetrain.testing.contract import context, contract


@context("pruner")
def _pruner_context(subject: Any, options: Any, raw: dict[str, Any]) -> None:
    raw["run"]["steps"] = max(raw["run"]["steps"], 6)


@contract("pruner.keeps_training_finite", "pruner", examples=3)
def keeps_training_finite(subject: Any, data: Any) -> None:
    """A run with the pruner ends with finite weights and a finite loss."""
    options = data.draw(subject.options(small=True), label="options")
    trainer = subject.trainer(options)
    outcome = subject.fit(trainer, options)
    if not math.isfinite(outcome.metrics["loss"]):
        subject.fail(f"with options {options!r} the loss ended at {outcome.metrics['loss']}")
