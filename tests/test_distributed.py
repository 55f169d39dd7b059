"""torch.distributed on the CPU: processes over gloo on loopback, launched by torchrun.

Every test here starts several processes and is marked slow; tests/test_fsdp.py covers the
sharded strategy and store on one process, fast.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import phasetrain

pytestmark = [pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable"),
              pytest.mark.slow]


def torchrun(*args: str, nproc: int = 2, env: dict | None = None, timeout: float = 240, launcher: tuple = ()):
    cmd = [sys.executable, "-m", "torch.distributed.run", *(launcher or ("--standalone",)),
           f"--nproc_per_node={nproc}", "-m", "phasetrain", *args]
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


# ---------------------------------------------------------------------------------------------
# FSDP: sharded training, sharded checkpoints that reshard, elastic restarts, several nodes
# ---------------------------------------------------------------------------------------------

FSDP = (*BASE, "task.batch_size=24", "run.keep_checkpoints=5", "strategy={use='fsdp', wrap_depth=1}",
        "store='sharded'")

KILL_DURING_SAVE = """
    import json, os, signal, time
    from phasetrain import hookimpl
    from phasetrain.plugins import sharded_store

    _sha256 = sharded_store.sha256
    ATTEMPT, RANK = os.environ["TORCHELASTIC_RESTART_COUNT"], os.environ["RANK"]

    def dying(path):
        # rank 1 dies inside the save of step 20, after writing its shard, on the first attempt
        if ATTEMPT == "0" and RANK == "1" and ".tmp-step-00000020" in str(path):
            os.kill(os.getpid(), signal.SIGKILL)
        return _sha256(path)

    sharded_store.sha256 = dying

    @hookimpl
    def train_start(trainer):
        os.makedirs(trainer.out_dir, exist_ok=True)  # rank 0 may not have made it yet
        with open(os.path.join(str(trainer.out_dir), f"attempt-{ATTEMPT}-{RANK}.json"), "w") as f:
            json.dump({"from_step": trainer.state.step}, f)
"""


@pytest.fixture(scope="module")
def killed_and_restarted(tmp_path_factory):
    """A 2-process FSDP run under torchrun --max-restarts=1 whose rank 1 is SIGKILLed while the
    checkpoint of step 20 is being written (shards on disk, nothing published)."""
    from .test_registry import fake_distribution

    root = tmp_path_factory.mktemp("elastic")
    env = fake_distribution(root / "site", KILL_DURING_SAVE, name="killsave")
    out = root / "run"
    result = torchrun("run", "regression", *sets(*FSDP, f"run.out_dir='{out}'", "strategy.timeout_s=60"), env=env,
                      launcher=("--standalone", "--max-restarts=1", "--monitor-interval=0.2"), timeout=400)
    return result, out


def test_an_fsdp_run_killed_during_a_sharded_save_restarts_resumes_by_itself_and_matches_one_process(
        killed_and_restarted, tmp_path):
    import json

    result, out = killed_and_restarted
    assert result.returncode == 0, result.stderr[-3000:]
    attempts = {p.name: json.loads(p.read_text())["from_step"] for p in out.glob("attempt-*.json")}
    assert attempts == {"attempt-0-0.json": 0, "attempt-0-1.json": 0, "attempt-1-0.json": 10, "attempt-1-1.json": 10}, \
        result.stderr[-5000:]
    assert "resuming from" in result.stdout and "step-00000010" in result.stdout
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == [f"step-000000{n}0" for n in (1, 2, 3, 4)]  # step 20 written again; no temporary left
    final = phasetrain.load_checkpoint(out)
    assert final["meta"]["world_size"] == 2 and final["meta"]["step"] == 40
    for name, tensor in single(tmp_path, "task.batch_size=24").items():  # one process, no sharding
        assert torch.allclose(final["model"][name], tensor, atol=1e-6, rtol=0), name


def test_a_checkpoint_saved_by_2_processes_resumes_on_3_and_on_1_to_the_same_model(killed_and_restarted, tmp_path):
    import shutil

    _result, out = killed_and_restarted
    reference = phasetrain.load_checkpoint(out)["model"]
    for nproc in (3, 1):
        run = tmp_path / f"on{nproc}"
        shutil.copytree(out / "checkpoints" / "step-00000020", run / "checkpoints" / "step-00000020")
        if nproc == 1:  # one process needs no launcher (a group of its own): here, in this process
            reports = []
            trainer = phasetrain.Trainer.from_config("regression", [*FSDP, f"run.out_dir='{run}'"])
            try:
                trainer.resume(report=reports.append)
                trainer.fit()
            finally:
                trainer.strategy.close()
            said = "\n".join(reports)
        else:
            resumed = torchrun("run", "regression", *sets(*FSDP, f"run.out_dir='{run}'"), "--resume", nproc=nproc)
            assert resumed.returncode == 0, resumed.stderr[-3000:]
            said = resumed.stderr
        assert f"was written by 2 process(es) and this run has {nproc}" in said
        final = phasetrain.load_checkpoint(run)
        assert final["meta"]["world_size"] == nproc and final["meta"]["step"] == 40
        for name, tensor in reference.items():
            assert torch.allclose(final["model"][name], tensor, atol=1e-6, rtol=0), (nproc, name)


COUNT_COLLECTIVES = """
    import json, os
    import torch.distributed as dist
    import torch.distributed._functional_collectives as funcol
    from phasetrain import hookimpl

    CALLS = {dist: ["all_reduce", "all_gather_single", "reduce_scatter_single", "all_gather_into_tensor",
                    "reduce_scatter_tensor", "all_gather", "all_gather_object", "broadcast", "barrier"],
             funcol: ["all_reduce", "all_gather_tensor", "reduce_scatter_tensor"]}
    steps, now = {}, {"step": None}

    def counted(module, name):
        real = getattr(module, name)
        key = ("funcol." if module is funcol else "dist.") + name

        def call(*args, **kwargs):
            if now["step"] is not None:  # inside a step: between its pre_step and its post_step
                calls = steps[now["step"]]["calls"]
                calls[key] = calls.get(key, 0) + 1
            return real(*args, **kwargs)

        return call

    @hookimpl
    def train_start(trainer):
        for module, names in CALLS.items():
            for name in names:
                setattr(module, name, counted(module, name))

    @hookimpl(tryfirst=True)
    def pre_step(trainer, step):
        steps[step] = {"phase": trainer.phase.name, "calls": {}}
        now["step"] = step

    @hookimpl(tryfirst=True)
    def post_step(step, metrics):
        steps[step]["probe"] = "probe_loss" in metrics
        now["step"] = None

    @hookimpl
    def train_end(trainer):
        os.makedirs(trainer.out_dir, exist_ok=True)
        with open(os.path.join(str(trainer.out_dir), f"steps-{os.environ['RANK']}.json"), "w") as f:
            json.dump({"steps": steps, "predicted": trainer.schedule.predicted_steps}, f)
"""

HYBRID = ("run.steps=60", "run.checkpoint_every=0", "dynamics={use='linear', window=3}",
          "schedule={use='hybrid', warmup_steps=10, min_full_steps=5, confidence_threshold=0.0, "
          "initial_predict_steps=4, correct_steps=4, loss_check_every=2}")


def test_two_nodes_by_c10d_rendezvous_train_one_sharded_hybrid_job_whose_predictions_communicate_nothing(tmp_path):
    import json
    import socket

    from .test_registry import fake_distribution

    env = {**os.environ, **fake_distribution(tmp_path / "site", COUNT_COLLECTIVES, name="collectives")}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "nodes"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=two-nodes", "-m", "phasetrain", "run", "regression",
           *sets(*FSDP, *HYBRID, f"run.out_dir='{out}'")]
    nodes = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (_stdout, stderr) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, stderr[-3000:]
    assert sum(stdout.count("== phasetrain summary") for stdout, _ in outputs) == 1  # one job, one rank 0
    assert phasetrain.load_checkpoint(out)["meta"]["world_size"] == 2
    for rank in (0, 1):
        seen = json.loads((out / f"steps-{rank}.json").read_text())
        steps = seen["steps"].values()
        predicted = [s for s in steps if s["phase"] == "predict"]
        assert seen["predicted"] == len(predicted) > 0
        assert all(s["calls"] == {} for s in predicted if not s["probe"])  # a predicted step: no communication
        probes = [s["calls"] for s in predicted if s["probe"]]
        assert probes and all(c.get("dist.all_reduce") == 1 and "dist.reduce_scatter_single" not in c
                              and c.get("dist.all_gather_single", 0) > 0 for c in probes)  # forward + one scalar
        assert all(s["calls"].get("dist.reduce_scatter_single", 0) > 0 for s in steps if s["phase"] != "predict")
    trainer = phasetrain.Trainer.from_config("regression", [*BASE, "task.batch_size=24", *HYBRID,
                                                            f"run.out_dir='{tmp_path / 'one'}'"])
    trainer.fit()
    two = phasetrain.load_checkpoint(out)
    assert two["plugins"]["hybrid"]["predicted_steps"] == trainer.schedule.predicted_steps
    for name, tensor in trainer.model.state_dict().items():  # the same decisions as on one process
        assert torch.allclose(two["model"][name], tensor, atol=1e-5, rtol=0), name
