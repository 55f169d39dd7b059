"""The Lion plugin works through phasetrain's entry points, with no change to phasetrain."""

from __future__ import annotations

import torch

import phasetrain
from phasetrain.registry import load_registry
from phasetrain.testing import check_component


def test_lion_is_discovered_with_its_distribution():
    registry = load_registry()
    assert "lion" in registry.names("optimizer")
    assert registry.origin("optimizer", "lion").distribution == "phasetrain-lion"


def test_a_config_uses_lion_by_name_and_training_lowers_the_loss(tmp_path):
    trainer = phasetrain.Trainer.from_config(
        "regression",
        [f"run.out_dir='{tmp_path}'", "run.steps=150", "optimizer={use='lion', lr=3e-4}",
         "observers.console.quiet=true", "lr_schedule={use='constant'}"],
    )
    assert type(trainer.optimizer).__name__ == "Lion"
    before = trainer.evaluate()["eval_loss"]
    outcome = trainer.fit()
    assert outcome.status == "completed"
    assert outcome.eval["eval_loss"] < 0.5 * before


def test_lion_state_survives_a_checkpoint(tmp_path):
    args = [f"run.out_dir='{tmp_path}'", "run.steps=20", "optimizer={use='lion'}", "observers.console.quiet=true"]
    trainer = phasetrain.Trainer.from_config("regression", args)
    trainer.fit()
    state = phasetrain.load_checkpoint(tmp_path)
    moments = state["optimizers"]["main"]["state"]
    assert moments and all("exp_avg" in s for s in moments.values())
    live = trainer.optimizer.state_dict()["state"]
    for key, saved in moments.items():
        assert torch.equal(saved["exp_avg"], live[key]["exp_avg"])


def test_lion_meets_every_phasetrain_contract_for_optimizers():
    # phasetrain's conformance kit: builds, config and checkpoint round trips, determinism, a step
    # on a quadratic, state_dict round trips and the closure protocol, driven by hypothesis.
    check_component("optimizer", "lion")
