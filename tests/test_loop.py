"""The Trainer: hook protocol, phases, closure optimizers, components that hear hooks."""

from __future__ import annotations

import torch

import phasetrain
from phasetrain import hookimpl


class Recorder:
    """Records the order of events of a run."""

    def __init__(self):
        self.events = []

    @hookimpl
    def train_start(self, trainer):
        self.events.append(("train_start", trainer.step))

    @hookimpl
    def phase_enter(self, phase, previous):
        self.events.append(("phase_enter", phase.name, previous.name if previous else None))

    @hookimpl
    def pre_step(self, step):
        self.events.append(("pre_step", step))

    @hookimpl
    def post_step(self, trainer, step, metrics):
        assert trainer.step == step + 1
        self.events.append(("post_step", step, float(metrics["loss"])))

    @hookimpl
    def eval_end(self, step, metrics):
        self.events.append(("eval_end", step))

    @hookimpl
    def checkpoint(self, state):
        self.events.append(("checkpoint",))
        state["recorder"] = {"events": len(self.events)}

    @hookimpl
    def train_end(self, outcome):
        self.events.append(("train_end", outcome.status, outcome.steps))


def test_hooks_fire_in_protocol_order(quiet):
    rec = Recorder()
    trainer = phasetrain.Trainer.from_config(
        "regression", [*quiet, "run.steps=4", "run.eval_every=2", "run.checkpoint_every=3"], plugins=[rec]
    )
    trainer.fit()
    names = [e[0] for e in rec.events]
    assert names == [
        "train_start", "phase_enter", "pre_step", "post_step", "pre_step", "post_step", "eval_end",
        "pre_step", "post_step", "checkpoint", "pre_step", "post_step", "eval_end", "checkpoint", "train_end",
    ]
    assert rec.events[1] == ("phase_enter", "train", None)
    assert [e[1] for e in rec.events if e[0] == "pre_step"] == [0, 1, 2, 3]
    assert rec.events[-1] == ("train_end", "completed", 4)
    saved = phasetrain.load_checkpoint(trainer.out_dir)
    assert saved["plugins"]["recorder"]["events"] == 14


def test_training_lowers_the_loss_and_is_deterministic(quiet):
    a = phasetrain.Trainer.from_config("regression", [*quiet, "run.steps=200"])
    first = a.evaluate()["eval_loss"]
    out_a = a.fit()
    b = phasetrain.Trainer.from_config("regression", [*quiet, "run.steps=200", f"run.out_dir='{a.out_dir}-b'"])
    out_b = b.fit()  # a fresh run refuses a's directory: a run never overwrites another's files
    assert out_a.eval["eval_loss"] < 0.2 * first
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_staged_schedule_switches_to_lbfgs_with_its_closure(quiet):
    from phasetrain import config as cfg

    data = cfg.load("regression-lbfgs", [*quiet, "run.steps=30"]).to_dict()
    data["schedule"]["stages"][0]["steps"] = 20  # the preset's 250 Adam steps, shortened
    rec = Recorder()
    trainer = phasetrain.Trainer.from_config(data, plugins=[rec])
    trainer.fit()
    phases = [e for e in rec.events if e[0] == "phase_enter"]
    assert phases == [("phase_enter", "adam", None), ("phase_enter", "lbfgs", "adam")]
    assert type(trainer.optimizers["main"]).__name__ == "Adam"
    assert type(trainer.optimizers["phase.lbfgs"]).__name__ == "LBFGS"
    losses = [e[2] for e in rec.events if e[0] == "post_step"]
    assert losses[-1] < losses[19]  # L-BFGS improved on where Adam left off
    assert trainer.optimizers["phase.lbfgs"].state_dict()["state"][0]["n_iter"] > 10


def test_lr_schedule_from_torch_is_applied(quiet):
    trainer = phasetrain.Trainer.from_config(
        "regression", [*quiet, "run.steps=10", "lr_schedule={use='cosine', min_lr_ratio=0.1}", "optimizer.lr=0.01"]
    )
    trainer.fit()
    assert abs(trainer.optimizer.param_groups[0]["lr"] - 0.001) < 1e-9
    assert isinstance(trainer.lr_scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)


def test_chosen_components_hear_the_hooks_they_implement(quiet):
    heard = []

    class Listening:
        def __init__(self, options, ctx):
            pass

        @hookimpl
        def phase_enter(self, phase):
            heard.append(phase.name)

    from phasetrain import Component, NoOptions
    from phasetrain.registry import plugin

    class Provider:
        @hookimpl
        def phasetrain_components(self):
            return [Component("offload", "listening", Listening, NoOptions)]

    trainer = phasetrain.Trainer.from_config(
        "regression", [*quiet, "run.steps=2", "offload.use=listening"], plugins=[plugin(Provider(), "p", "p-dist")]
    )
    trainer.fit()
    assert heard == ["train"]


def test_a_plugin_can_replace_the_step_for_a_phase(quiet):
    class Frozen:
        @hookimpl
        def run_step(self, trainer, phase):
            return {"loss": torch.tensor(0.0), "frozen": True}

    trainer = phasetrain.Trainer.from_config("regression", [*quiet, "run.steps=3"], plugins=[Frozen()])
    before = [p.detach().clone() for p in trainer.model.parameters()]
    outcome = trainer.fit()
    assert outcome.metrics["frozen"] is True
    for a, b in zip(before, trainer.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_lm_task_trains_on_the_shipped_corpus(quiet):
    trainer = phasetrain.Trainer.from_config(
        "lm", [*quiet, "run.steps=30", "task.n_layer=1", "task.n_embd=32", "task.block_size=32",
               "task.batch_size=16", "run.eval_every=0", "run.checkpoint_every=0"]
    )
    first = trainer.evaluate()["eval_loss"]
    outcome = trainer.fit()
    assert outcome.eval["eval_loss"] < first - 0.5
    assert 0 < outcome.eval["eval_bpc"] < 8
