"""A non-finite loss or gradient is never applied, and the configured policy follows."""

from __future__ import annotations

import attrs
import pytest
import torch

import phasetrain
from phasetrain import Component, hookimpl
from phasetrain.errors import TrainingFailed
from phasetrain.plugins.tasks.regression import Regression, RegressionOptions
from phasetrain.registry import plugin


@attrs.define
class PoisonOptions(RegressionOptions):
    bad: list[int] = attrs.field(factory=list)  # batch indices whose loss is NaN
    max_lr: float = 1.0  # ...while the learning rate is above this (a rollback can cure it)
    grad_only: bool = False  # poison the gradient but keep the loss finite
    n_train: int = 256
    batch_size: int = 32


class Poisoned(Regression):
    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        self.bad = set(options.bad)
        self.max_lr = options.max_lr
        self.trainer = ctx.trainer
        self.grad_only = options.grad_only

    def batch(self, index):
        return (*super().batch(index), index)

    def loss(self, model, batch):
        x, y, index = batch if len(batch) == 3 else (*batch, None)  # evaluation passes (x, y)
        loss = super().loss(model, (x, y))
        if index in self.bad and self.trainer.optimizer.param_groups[0]["lr"] > self.max_lr:
            if self.grad_only:  # sqrt'(0) = inf: a NaN gradient under a finite loss
                first = next(model.parameters())
                return loss + torch.sqrt(first.sum() * 0)
            return loss * float("nan")
        return loss


class Provider:
    @hookimpl
    def phasetrain_components(self):
        return [Component("task", "poisoned", Poisoned, PoisonOptions)]


class Weights:
    """Records the weights after every step."""

    def __init__(self):
        self.after = {}

    @hookimpl(trylast=True)
    def post_step(self, trainer, step, metrics):
        self.after[step] = ([p.detach().clone() for p in trainer.model.parameters()], dict(metrics))


def trainer_for(quiet, *extra, bad=(3,), grad_only=False, rec=None, max_lr=0.0):
    plugins = [plugin(Provider(), "poison", "poison-dist")] + ([rec] if rec else [])
    return phasetrain.Trainer.from_config(
        {"task": {"use": "poisoned", "bad": list(bad), "grad_only": grad_only, "max_lr": max_lr}},
        [*quiet, "run.steps=8", *extra], plugins=plugins,
    )


@pytest.mark.parametrize("grad_only", [False, True])
def test_a_non_finite_step_is_never_applied(quiet, grad_only):
    rec = Weights()
    trainer_for(quiet, grad_only=grad_only, rec=rec).fit()
    before, after = rec.after[2][0], rec.after[3][0]
    assert rec.after[3][1]["nonfinite"] == 1
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a, b)
    assert not any(torch.equal(a, b) for a, b in zip(after, rec.after[4][0], strict=True))
    assert all(torch.isfinite(p).all() for p in rec.after[7][0])


def test_a_bad_lbfgs_evaluation_leaves_weights_and_history_untouched(quiet):
    rec = Weights()
    trainer = trainer_for(quiet, "optimizer={use='lbfgs', max_iter=4}", "lr_schedule={use='constant'}", rec=rec)
    trainer.fit()
    for a, b in zip(rec.after[2][0], rec.after[3][0], strict=True):
        assert torch.equal(a, b)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_stop_policy_fails_after_patience_keeping_the_last_good_checkpoint(quiet):
    trainer = trainer_for(quiet, "nonfinite={use='stop', patience=2}", "run.checkpoint_every=2",
                          bad=(4, 5, 6, 7))
    with pytest.raises(TrainingFailed, match="not finite for 2 consecutive steps"):
        trainer.fit()
    assert trainer.outcome.status == "failed"
    state = phasetrain.load_checkpoint(trainer.out_dir)
    assert state["meta"]["step"] == 4


def test_rollback_policy_restores_the_checkpoint_and_lowers_the_learning_rate(quiet):
    trainer = trainer_for(quiet, "nonfinite={use='rollback', patience=2}", "run.checkpoint_every=2",
                          "lr_schedule={use='constant'}", "optimizer.lr=0.01", bad=(4, 5), max_lr=0.008)
    outcome = trainer.fit()
    assert outcome.status == "completed" and outcome.steps == 8
    assert trainer.component("nonfinite").rollbacks == 1
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.005)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_rollback_gives_up_when_lower_learning_rates_do_not_help(quiet):
    trainer = trainer_for(quiet, "nonfinite={use='rollback', patience=2}", "run.checkpoint_every=2",
                          bad=(4, 5))
    with pytest.raises(TrainingFailed, match="after 3 rollbacks to step-00000004"):
        trainer.fit()


@pytest.mark.parametrize("policy", ["skip", "rollback", "stop", "off"])
def test_a_run_whose_last_loss_is_not_finite_fails_instead_of_completing(quiet, policy):
    trainer = trainer_for(quiet, f"nonfinite.use='{policy}'", "run.checkpoint_every=4", bad=(7,), max_lr=0.0)
    with pytest.raises(TrainingFailed, match=r"the loss of the last step \(8\) is nan: the run diverged"):
        trainer.fit()
    assert trainer.outcome.status == "failed"
    names = sorted(p.name for p in (trainer.out_dir / "checkpoints").iterdir())
    assert names == ["step-00000004"]  # the diverged end is not saved over the last good one


def test_a_bad_step_before_the_last_does_not_fail_the_run(quiet):
    trainer = trainer_for(quiet, bad=(6,))
    assert trainer.fit().status == "completed"
