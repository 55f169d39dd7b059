"""The fsdp strategy and the sharded store, in this process: one rank in a group of its own.

Everything here runs the same code a torchrun launch runs (fully_shard, DTensor parameters,
DCP shards); what needs several processes (resharding, reduce-scatter, elastic restarts,
rendezvous) is in tests/test_distributed.py, marked slow.
"""

from __future__ import annotations

import hashlib
import json
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import phasetrain
from phasetrain import hookimpl
from phasetrain.errors import BadInput, CheckpointError, HookFailed, TrainingFailed
from phasetrain.plugins import sharded_store
from phasetrain.plugins.distributed import is_dtensor, resume_on_restart
from phasetrain.plugins.fsdp import units

BASE = ["run.threads=1", "run.device='cpu'", "run.steps=20", "run.checkpoint_every=10", "run.keep_checkpoints=5",
        "lr_schedule={use='constant'}", "observers.console.quiet=true", "task.batch_size=24"]
SHARDED = ["strategy={use='fsdp', wrap_depth=1}", "store='sharded'"]


def plain(state):
    """A model's state as full plain tensors (DTensors gathered)."""
    return {k: (v.full_tensor() if is_dtensor(v) else v).detach().clone() for k, v in state.items()}


def trained(out, *extra, plugins=(), resume=False, fit=True):
    """Train (or resume and train) a regression run; return (trainer, final weights). The
    process group of an fsdp run is left before returning."""
    trainer = phasetrain.Trainer.from_config("regression", [*BASE, *extra, f"run.out_dir='{out}'"], plugins=plugins)
    try:
        if resume:
            trainer.resume(report=lambda _m: None)
        if fit:
            trainer.fit()
        return trainer, plain(trainer.model.state_dict())
    finally:
        trainer.strategy.close()


def assert_same(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=atol, rtol=0), (name, (a[name] - b[name]).abs().max())


# ---------------------------------------------------------------------------------------------
# Units
# ---------------------------------------------------------------------------------------------


class Block(torch.nn.Module):
    def __init__(self, depth):
        super().__init__()
        self.inner = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh())
        self.more = torch.nn.ModuleList([Block(depth - 1)] if depth > 1 else [])


trees = st.recursive(st.just("leaf") | st.just("act"), lambda kids: st.lists(kids, min_size=1, max_size=3), max_leaves=12)


def build(tree):
    """A module tree: lists become Sequential containers (or ModuleLists), leaves Linear / Tanh."""
    if tree == "leaf":
        return torch.nn.Linear(2, 2)
    if tree == "act":
        return torch.nn.Tanh()
    return torch.nn.Sequential(*[build(t) for t in tree])


def depth_of(model):
    """Depth of every module below ``model`` (ModuleList looked through), by id."""
    out = {}

    def visit(module, level):
        for child in module.children():
            own = level if isinstance(child, (torch.nn.ModuleList, torch.nn.ModuleDict)) else level + 1
            out[id(child)] = own
            visit(child, own)

    visit(model, 0)
    return out


@settings(max_examples=40, deadline=None)
@given(tree=trees, depth=st.integers(0, 4), by_class=st.booleans())
def test_units_come_children_first_hold_parameters_and_follow_class_and_depth(tree, depth, by_class):
    model = build(["leaf", tree])  # at least one Linear, so that wrap = ["Linear"] names a class it has
    classes = ["Linear"] if by_class else []
    chosen = units(model, classes, depth)
    levels, position = depth_of(model), {id(m): i for i, m in enumerate(chosen)}
    assert model not in chosen and len(position) == len(chosen)
    for module in model.modules():
        if module is model:
            continue
        holds = any(True for _ in module.parameters())
        wanted = (by_class and isinstance(module, torch.nn.Linear)) or levels[id(module)] <= depth
        assert (id(module) in position) == (holds and wanted and not isinstance(module, torch.nn.ModuleList))
        for inner in module.modules():  # an inner unit is wrapped before the unit around it
            if inner is not module and id(inner) in position and id(module) in position:
                assert position[id(inner)] < position[id(module)]


def test_containers_are_looked_through_and_an_unknown_class_names_the_field():
    model = torch.nn.Sequential(Block(2))
    assert [type(m).__name__ for m in units(model, ["Block"], 0)] == ["Block", "Block"]
    assert units(model, [f"{Block.__module__}.Block"], 0) == units(model, ["Block"], 0)
    with pytest.raises(BadInput, match=r"strategy.wrap: the model has no module of class 'Blok' \(its classes: Block, "):
        units(model, ["Blok"], 0)


# ---------------------------------------------------------------------------------------------
# Training and checkpoints on one process
# ---------------------------------------------------------------------------------------------


def test_fsdp_on_one_process_trains_as_a_single_process_does(tmp_path):
    _, reference = trained(tmp_path / "one", "grad_clip={use='norm', max_norm=0.5}")
    trainer, sharded = trained(tmp_path / "fsdp", *SHARDED, "grad_clip={use='norm', max_norm=0.5}")
    assert trainer.strategy.units == ["0", "2", "4"]  # the three Linear layers; Tanh holds nothing
    assert all(is_dtensor(p) for p in trainer.trainable)  # the optimizer trained the sharded parameters
    assert isinstance(trainer.outcome.metrics["grad_norm"], float)
    assert_same(sharded, reference, atol=1e-6)


def test_a_sharded_run_resumes_bit_for_bit_and_load_model_returns_the_full_model(tmp_path):
    extra = [*SHARDED, "averaging={use='ema', decay=0.9}", "run.eval_every=5"]
    whole, final = trained(tmp_path / "a", *extra)
    trained(tmp_path / "b", *extra, "run.steps=10")
    resumed, again = trained(tmp_path / "b", *extra, resume=True)
    assert resumed.resumed_from.name == "step-00000010"
    assert_same(again, final)
    files = sorted(p.name for p in (tmp_path / "b" / "checkpoints" / "step-00000020").iterdir())
    assert files == [".metadata", "__0_0.distcp", "meta.json", "state.pt"]
    saved = phasetrain.load_checkpoint(tmp_path / "b")  # outside a run: full plain tensors
    assert saved["meta"]["world_size"] == 1 and not any(is_dtensor(t) for t in saved["model"].values())
    model = phasetrain.load_model(tmp_path / "b")
    assert not any(is_dtensor(t) for t in model.state_dict().values())
    assert_same(model.state_dict(), saved["model"])  # the exported (averaged) weights
    assert not torch.equal(saved["model"]["0.weight"], final["0.weight"])  # which are not the trained ones


class CrashOnWrite:
    """Makes the sharded store fail at its n-th file operation of the save of ``step``."""

    def __init__(self, monkeypatch, n):
        self.n, self.calls = n, 0
        for name in ("_write", "_fsync_dir"):
            real = getattr(sharded_store, name)
            monkeypatch.setattr(sharded_store, name, self.wrap(real))
        real_replace = sharded_store.os.replace
        monkeypatch.setattr(sharded_store.os, "replace", self.wrap(real_replace))

    def wrap(self, real):
        def counted(*args, **kwargs):
            if any(".tmp-step-00000020" in str(a) for a in args):
                self.calls += 1
                if self.calls == self.n:
                    raise OSError("disk gone")
            return real(*args, **kwargs)

        return counted


@pytest.mark.parametrize("n", [1, 2, 3, 4])  # state.pt, meta.json, fsync, the rename
def test_a_crash_during_a_sharded_save_leaves_the_previous_checkpoint_resumable(tmp_path, monkeypatch, n):
    with monkeypatch.context() as patch:
        CrashOnWrite(patch, n)
        with pytest.raises(HookFailed, match="store .sharded. from phasetrain .* raised OSError: disk gone"):
            trained(tmp_path / "c", *SHARDED)
    root = tmp_path / "c" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == [".tmp-step-00000020", "step-00000010"]
    resumed, _ = trained(tmp_path / "c", *SHARDED, resume=True)
    assert resumed.resumed_from.name == "step-00000010"
    assert sorted(p.name for p in root.iterdir()) == ["step-00000010", "step-00000020"]  # the stale one is gone


def test_a_damaged_shard_is_reported_and_the_previous_checkpoint_used(tmp_path):
    trained(tmp_path / "d", *SHARDED)
    shard = tmp_path / "d" / "checkpoints" / "step-00000020" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    reports = []
    trainer = phasetrain.Trainer.from_config("regression", [*BASE, *SHARDED, f"run.out_dir='{tmp_path / 'd'}'"])
    try:
        assert trainer.resume(report=reports.append).name == "step-00000010"
    finally:
        trainer.strategy.close()
    assert "__0_0.distcp: checksum mismatch" in reports[0]


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("target", [".metadata", "state.pt"])
def test_a_hostile_pickle_is_refused_and_never_runs_even_with_a_forged_checksum(tmp_path, target):
    trained(tmp_path / "e", *SHARDED, "run.steps=10")
    ckpt = tmp_path / "e" / "checkpoints" / "step-00000010"
    marker = tmp_path / "pwned"
    if target == "state.pt":  # torch.save's layout with a hostile data.pkl
        import io
        import zipfile

        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            zf.writestr("archive/data.pkl", pickle.dumps({"model": Evil(marker)}))
            zf.writestr("archive/version", "3\n")
        payload = buffer.getvalue()
    else:
        payload = pickle.dumps(Evil(marker))
    (ckpt / target).write_bytes(payload)
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["sha256"][target] = hashlib.sha256(payload).hexdigest()
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="refused to load"):
        phasetrain.load_checkpoint(ckpt)
    assert not marker.exists()


def test_non_finite_weights_are_never_written(tmp_path):
    class Poison:
        @hookimpl
        def post_step(self, trainer, step):
            if step == 14:
                with torch.no_grad():
                    trainer.trainable[0].mul_(float("nan"))

    with pytest.raises(TrainingFailed, match="non-finite weights|the run diverged"):
        trained(tmp_path / "n", *SHARDED, "nonfinite='off'", plugins=[Poison()])
    assert [p.name for p in (tmp_path / "n" / "checkpoints").iterdir()] == ["step-00000010"]


def test_load_checkpoint_reads_either_store_and_says_what_each_found_when_neither_can(tmp_path):
    trained(tmp_path / "l", "run.steps=2")
    trained(tmp_path / "s", *SHARDED, "run.steps=2")
    assert phasetrain.load_checkpoint(tmp_path / "l")["meta"]["format"] == 2  # the default store's
    assert phasetrain.load_checkpoint(tmp_path / "s")["meta"]["format"] == sharded_store.FORMAT
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        phasetrain.load_checkpoint(tmp_path / "nothing")
    (tmp_path / "s" / "checkpoints" / "step-00000002" / "state.pt").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match=r"not a phasetrain checkpoint of format 2.*state.pt: checksum mismatch"):
        phasetrain.load_checkpoint(tmp_path / "s" / "checkpoints" / "step-00000002")


# ---------------------------------------------------------------------------------------------
# What cannot run sharded is refused before the first step
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "message"), [
    (["strategy='fsdp'"], r"^preset regression: store: .*the store 'local' cannot write; .*\[store\] use = \"sharded\""),
    ([*SHARDED, "precision='fp16'"], r'^preset regression: precision: "fp16" under strategy "fsdp": loss scaling'),
    ([*SHARDED, "strategy.offload_params=true"], r"^preset regression: strategy.offload_params: needs a CUDA device"),
    ([*SHARDED, "strategy.wrap=['Transformer']"],
     r"^preset regression: strategy.wrap: the model has no module of class 'Transformer'"),
    ([*SHARDED, "optimizer={use='lbfgs'}"], r"^preset regression: optimizer 'main' needs a closure \(L-BFGS\)"),
])
def test_what_cannot_run_sharded_is_refused_at_start(tmp_path, extra, message):
    with pytest.raises(BadInput, match=message):
        trained(tmp_path / "r", *extra, fit=True)


# ---------------------------------------------------------------------------------------------
# Hybrid training and weight averaging on the shards
# ---------------------------------------------------------------------------------------------

HYBRID = ["run.steps=40", "run.checkpoint_every=0", "dynamics={use='linear', window=3}",
          "schedule={use='hybrid', warmup_steps=10, min_full_steps=5, confidence_threshold=0.0, "
          "initial_predict_steps=4, correct_steps=4, loss_check_every=2}"]


def test_hybrid_predicts_on_the_shards_as_it_does_on_whole_tensors(tmp_path):
    whole, reference = trained(tmp_path / "h1", *HYBRID)
    sharded, weights = trained(tmp_path / "h2", *HYBRID, *SHARDED)
    assert sharded.schedule.predicted_steps == whole.schedule.predicted_steps > 0
    assert sharded.schedule.rollbacks == whole.schedule.rollbacks
    assert_same(weights, reference, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Elastic restarts
# ---------------------------------------------------------------------------------------------


def test_a_restarted_group_resumes_only_when_the_run_has_a_checkpoint(tmp_path, monkeypatch):
    trainer = phasetrain.Trainer.from_config("regression", [*BASE, f"run.out_dir='{tmp_path / 'r'}'"])
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    assert not resume_on_restart(trainer)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert not resume_on_restart(trainer)  # failed before its first checkpoint: start again
    trainer.fit()
    assert resume_on_restart(trainer)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert not resume_on_restart(trainer)  # the first attempt never resumes by itself


@pytest.mark.parametrize(("mode", "gathered"), [("auto", torch.bfloat16), ("off", torch.float32)])
def test_bf16_gathers_parameters_in_bf16_over_float32_master_weights(tmp_path, mode, gathered):
    seen = []

    class Watch:
        @hookimpl
        def train_start(self, trainer):
            trainer.model[0].register_forward_pre_hook(lambda module, _args: seen.append(module.weight.dtype))

    trainer, _ = trained(tmp_path / mode, *SHARDED, "precision='bf16'", f"strategy.mixed_precision='{mode}'",
                         "run.steps=3", plugins=[Watch()])
    assert seen and set(seen) == {gathered}
    assert {p.dtype for p in trainer.trainable} == {torch.float32}
    assert torch.isfinite(torch.tensor(trainer.outcome.metrics["loss"]))


NOWCAST = ["run.steps=60", "run.checkpoint_every=0", "schedule={use='nowcast', start=10, every=4}"]


@pytest.mark.parametrize("model", ["linefit", "nowcaster"])  # the nowcaster's layer scale spans all shards
def test_nowcast_jumps_on_the_shards_as_it_does_on_whole_tensors(tmp_path, model):
    whole, reference = trained(tmp_path / "n1", *NOWCAST, f"dynamics={{use='{model}'}}")
    sharded, weights = trained(tmp_path / "n2", *NOWCAST, f"dynamics={{use='{model}'}}", *SHARDED)
    assert sharded.schedule.controller.jumps == whole.schedule.controller.jumps > 0
    assert sharded.schedule.rollbacks == whole.schedule.rollbacks
    assert_same(weights, reference, atol=1e-5)
