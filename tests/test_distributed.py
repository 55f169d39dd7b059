"""torch.distributed on the CPU: 2 processes over gloo on loopback, launched by torchrun."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import phasetrain

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def torchrun(*args: str, nproc: int = 2, env: dict | None = None, timeout: float = 240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "phasetrain", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def sets(*items: str) -> list[str]:
    out = []
    for item in items:
        out += ["--set", item]
    return out


BASE = ("run.threads=1", "run.device='cpu'", "run.steps=40", "run.checkpoint_every=10",
        "lr_schedule={use='constant'}")


def single(tmp_path, *extra):
    trainer = phasetrain.Trainer.from_config(
        "regression", [*BASE, *extra, f"run.out_dir='{tmp_path / 'one'}'", "observers.console.quiet=true"])
    trainer.fit()
    return trainer.model.state_dict()


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    result = torchrun("run", "regression", *sets(*BASE, f"run.out_dir='{tmp_path / 'two'}'",
                                                 "strategy.check_every=10"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("== phasetrain summary") == 1  # rank 0 alone reports
    import json

    records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps and len(steps) == len(set(steps))  # one writer: no record twice
    two = phasetrain.load_checkpoint(tmp_path / "two")
    assert len(two["rng"]["per_rank"]) == 2
    for name, tensor in single(tmp_path).items():
        assert torch.allclose(two["model"][name], tensor, atol=1e-6, rtol=0), name


def test_resume_of_a_two_process_run_continues_identically(tmp_path):
    whole = torchrun("run", "regression", *sets(*BASE, f"run.out_dir='{tmp_path / 'a'}'"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    first = torchrun("run", "regression", *sets(*BASE, "run.steps=20", f"run.out_dir='{tmp_path / 'b'}'"))
    assert first.returncode == 0, first.stderr[-3000:]
    second = torchrun("run", "regression", *sets(*BASE, f"run.out_dir='{tmp_path / 'b'}'"), "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    a, b = phasetrain.load_checkpoint(tmp_path / "a"), phasetrain.load_checkpoint(tmp_path / "b")
    for name, tensor in a["model"].items():
        assert torch.equal(b["model"][name], tensor), name


def test_a_failing_rank_stops_all_with_its_message_and_keeps_the_last_checkpoint(tmp_path):
    from .test_registry import fake_distribution

    env = fake_distribution(tmp_path / "site", """
        import os
        from phasetrain import hookimpl

        @hookimpl
        def post_step(step):
            if step == 24 and os.environ.get("RANK") == "1":
                raise RuntimeError("rank 1 lost its accelerator")
    """, name="rankfail")
    result = torchrun("run", "regression", *sets(*BASE, f"run.out_dir='{tmp_path / 'f'}'",
                                                 "strategy.timeout_s=30"), env=env)
    assert result.returncode != 0
    assert "rank 1 lost its accelerator" in result.stderr
    state = phasetrain.load_checkpoint(tmp_path / "f")
    assert state["meta"]["step"] == 20


class CollectiveCounter:
    """Counts DDP gradient all-reduces per phase through a communication hook."""

    def __init__(self):
        self.by_phase = {}

    @phasetrain.hookimpl
    def train_start(self, trainer):
        def hook(state, bucket):
            phase = trainer.schedule.controller.phase
            self.by_phase[phase] = self.by_phase.get(phase, 0) + 1
            return torch.distributed.algorithms.ddp_comm_hooks.default_hooks.allreduce_hook(None, bucket)

        trainer.train_model.register_comm_hook(None, hook)


def test_hybrid_under_two_processes_communicates_nothing_in_predict_but_loss_checks(tmp_path):
    from .test_registry import fake_distribution

    env = fake_distribution(tmp_path / "site", """
        import json, os
        import torch
        import torch.distributed as dist
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
        from phasetrain import hookimpl

        counts = {"grad": {}, "python": {}, "checks": 0, "weights_equal": None}
        _trainer = None

        def _phase():
            return _trainer.schedule.controller.phase

        _all_reduce = dist.all_reduce

        def counting_all_reduce(*args, **kwargs):
            counts["python"][_phase()] = counts["python"].get(_phase(), 0) + 1
            return _all_reduce(*args, **kwargs)

        @hookimpl
        def train_start(trainer):
            global _trainer
            _trainer = trainer
            dist.all_reduce = counting_all_reduce

            def hook(state, bucket):
                counts["grad"][_phase()] = counts["grad"].get(_phase(), 0) + 1
                return default_hooks.allreduce_hook(None, bucket)

            trainer.train_model.register_comm_hook(None, hook)

        @hookimpl(trylast=True)
        def phase_enter(phase):
            if phase.name == "predict":
                counts["checks"] += 1  # the reference loss taken on entry

        @hookimpl
        def post_step(metrics):
            if "probe_loss" in metrics:
                counts["checks"] += 1

        @hookimpl
        def train_end(trainer):
            dist.all_reduce = _all_reduce
            counts["predicted"] = trainer.schedule.predicted_steps
            path = os.path.join(str(trainer.out_dir), f"counts-{os.environ['RANK']}.json")
            with open(path, "w") as f:
                json.dump(counts, f)
    """, name="commcount")
    out = tmp_path / "h"
    result = torchrun("run", "regression", *sets(
        *BASE, "run.steps=60", f"run.out_dir='{out}'", "strategy.check_every=5",
        "schedule={use='hybrid', warmup_steps=10, min_full_steps=5, confidence_threshold=0.0, "
        "initial_predict_steps=4, correct_steps=4, loss_check_every=2}", "dynamics={use='linear', window=3}"), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    for rank in (0, 1):
        counts = json.loads((out / f"counts-{rank}.json").read_text())
        assert counts["predicted"] > 0
        assert counts["grad"].get("predict", 0) == 0  # no gradient all-reduce in Predict
        assert counts["grad"]["full"] > 0
        # in Predict, the only collectives are the one-scalar loss checks
        assert 0 < counts["python"].get("predict", 0) == counts["checks"]
