"""The supervised task's data path: batches are a pure function of (seed, index), processes read
disjoint parts of each global batch, and a resume mid-epoch (with loader workers, with random
augmentations, with an iterable dataset) continues bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import phasetrain
from phasetrain.plugins.supervised.loading import EpochBatches, per_epoch

from .conftest import ROOT, StopAt

H = "tests.supervised_helpers"


def batches(n, batch_size, *, start=0, count=1, rank=0, size=1, seed=0, shuffle=True, drop_last=False):
    sampler = EpochBatches(n, batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last, rank=rank, size=size,
                           start=start)
    it = iter(sampler)
    return [list(next(it)) for _ in range(count)]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 60), batch_size=st.integers(1, 16), start=st.integers(0, 40), drop_last=st.booleans(),
       seed=st.integers(0, 5))
def test_a_batch_is_the_same_whether_reading_starts_before_it_or_at_it(n, batch_size, start, drop_last, seed):
    if drop_last and n < batch_size:
        return
    from_zero = batches(n, batch_size, count=start + 3, seed=seed, drop_last=drop_last)
    assert batches(n, batch_size, start=start, count=3, seed=seed, drop_last=drop_last) == from_zero[start:]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 60), part=st.integers(1, 6), size=st.integers(1, 4), index=st.integers(0, 30),
       drop_last=st.booleans())
def test_processes_read_disjoint_parts_that_make_up_the_one_process_batch(n, part, size, index, drop_last):
    batch_size = part * size
    if drop_last and n < batch_size:
        return
    whole = batches(n, batch_size, start=index, drop_last=drop_last)[0]
    parts = [batches(n, batch_size, start=index, rank=r, size=size, drop_last=drop_last)[0] for r in range(size)]
    read = [i for p in parts for i in p]
    assert set(whole) <= set(read) and len(read) == len(whole) + (-len(whole)) % size  # a short one is padded
    if len(whole) == batch_size:  # a full batch: the parts are disjoint and exactly the one-process batch
        assert sorted(read) == sorted(whole)


def test_every_item_comes_once_per_epoch_in_a_new_order_each_epoch():
    n, b = 50, 8
    epochs = batches(n, b, count=2 * per_epoch(n, b, False))
    first, second = [i for x in epochs[:7] for i in x], [i for x in epochs[7:] for i in x]
    assert sorted(first) == sorted(second) == list(range(n)) and first != second


# ---------------------------------------------------------------------------------------------
# Resume mid-epoch, bit for bit
# ---------------------------------------------------------------------------------------------


BASE = {"optimizer": {"use": "adam", "lr": 0.01}}


def overrides(tmp_path, name, workers, steps=10, data=f"{H}:Augmented"):
    return [f"run.steps={steps}", f"run.out_dir='{tmp_path / name}'", "run.device='cpu'", "run.threads=1",
            "observers.console.quiet=true", "observers.jsonl.enabled=false", "run.checkpoint_every=100",
            f"task={{use='supervised', model='{H}:Net', train_data='{data}', loader={{batch_size=16, "
            f"num_workers={workers}}}}}"]


def weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


_WHOLE: dict = {}


def uninterrupted(tmp_path_factory, workers, data=f"{H}:Augmented"):
    if (workers, data) not in _WHOLE:
        trainer = phasetrain.Trainer.from_config(BASE, overrides(tmp_path_factory.mktemp("whole"), "w", workers, data=data))
        trainer.fit()
        _WHOLE[(workers, data)] = weights(trainer)
    return _WHOLE[(workers, data)]


def resumed(tmp_path, stop, workers, data=f"{H}:Augmented"):
    first = phasetrain.Trainer.from_config(BASE, overrides(tmp_path, "r", workers, data=data), plugins=[StopAt(stop)])
    assert first.fit().status == "interrupted"
    second = phasetrain.Trainer.from_config(BASE, overrides(tmp_path, "r", workers, data=data))
    second.resume(report=lambda _m: None)
    assert second.step == stop and second.fit().status == "completed"
    return weights(second)


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stop=st.integers(1, 9), workers=st.sampled_from([0, 2]))
def test_resume_mid_epoch_with_workers_and_augmentations_is_bitwise_equal(tmp_path_factory, stop, workers):
    # 96 items in batches of 16: 6 batches an epoch, so most stop points fall inside an epoch
    whole = uninterrupted(tmp_path_factory, workers)
    for name, tensor in resumed(tmp_path_factory.mktemp("resumed"), stop, workers).items():
        assert torch.equal(tensor, whole[name]), name


def test_resume_mid_epoch_with_two_workers_is_bitwise_equal(tmp_path_factory):
    whole = uninterrupted(tmp_path_factory, 2)
    for name, tensor in resumed(tmp_path_factory.mktemp("resumed"), 4, 2).items():
        assert torch.equal(tensor, whole[name]), name


def test_an_iterable_dataset_resumes_by_count(tmp_path_factory):
    whole = uninterrupted(tmp_path_factory, 0, data=f"{H}:Stream")
    for name, tensor in resumed(tmp_path_factory.mktemp("stream"), 4, 0, data=f"{H}:Stream").items():
        assert torch.equal(tensor, whole[name]), name


def test_workers_do_not_change_what_is_read(tmp_path_factory):
    plain = uninterrupted(tmp_path_factory, 0, data=f"{H}:table")
    with_workers = uninterrupted(tmp_path_factory, 2, data=f"{H}:table")
    for name, tensor in plain.items():
        assert torch.equal(tensor, with_workers[name]), name


# ---------------------------------------------------------------------------------------------
# torchrun: each process reads its own part, and two processes match one
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_processes_read_disjoint_shards_and_match_one_process(tmp_path):
    sets = ["run.steps=6", "run.device='cpu'", "run.threads=1", "run.checkpoint_every=100", "run.eval_every=3",
            "observers.console.quiet=true", f"task={{use='supervised', model='{H}:Net', model_args={{dropout=0.0}}, "
            f"train_data='{H}:Logged', val_data='{H}:table', metrics=['accuracy'], loader={{batch_size=16}}}}"]
    config = tmp_path / "base.toml"
    config.write_text('[optimizer]\nuse = "adam"\nlr = 0.01\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_DIR": str(tmp_path)}
    args = [a for s in [*sets, f"run.out_dir='{tmp_path / 'two'}'"] for a in ("--set", s)]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "phasetrain", "run", str(config), *args], capture_output=True, text=True, env=env,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    reads = [[int(i) for i in (tmp_path / f"reads-{r}.txt").read_text().split()] for r in (0, 1)]
    probe = 4  # each process reads the first items once to check that they fit the model
    parts = [r[probe:] for r in reads]
    assert len(parts[0]) == len(parts[1]) == 6 * 8  # 8 items per process per step
    for step in range(6):  # within every global batch the two parts are disjoint
        assert not set(parts[0][step * 8 : (step + 1) * 8]) & set(parts[1][step * 8 : (step + 1) * 8])
    os.environ["LOG_DIR"] = str(tmp_path / "one")
    (tmp_path / "one").mkdir()
    try:
        one = phasetrain.Trainer.from_config(BASE, [*sets, f"run.out_dir='{tmp_path / 'one'}'"])
        one.fit()
    finally:
        del os.environ["LOG_DIR"]
    single = [int(i) for i in (tmp_path / "one" / "reads-0.txt").read_text().split()][probe:]
    for step in range(6):  # ... and together the one-process global batch
        assert sorted(parts[0][step * 8 : (step + 1) * 8] + parts[1][step * 8 : (step + 1) * 8]) == sorted(
            single[step * 16 : (step + 1) * 16])
    two_state = phasetrain.load_checkpoint(tmp_path / "two")
    for name, tensor in one.model.state_dict().items():
        assert torch.allclose(two_state["model"][name], tensor, atol=1e-6, rtol=0), name
    assert two_state["meta"]["step"] == 6
    import json

    evals = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in evals if r["kind"] == "eval"][-1]  # each process evaluated half; torchmetrics gathered both
    assert last["accuracy"] == pytest.approx(one.last_eval["accuracy"], abs=1e-6)
    assert last["eval_loss"] == pytest.approx(one.last_eval["eval_loss"], abs=1e-5)
