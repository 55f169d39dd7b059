"""A crash at any instant of a checkpoint write leaves a resumable newest checkpoint: the
in-process crash injector (tests/crash_injector.py) crashes right after each file-system
operation, no timing involved."""

from __future__ import annotations

import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import phasetrain
from phasetrain.plugins import store

from . import crash_injector as injector


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    where = tmp_path_factory.mktemp("crash") / "base"
    return injector.base_run(where), where


@pytest.mark.parametrize("scenario", sorted(injector.SCENARIOS))
def test_every_crash_point_of_a_checkpoint_write_leaves_a_resumable_newest_checkpoint(base, tmp_path, scenario):
    trainer, where = base
    step = injector.SCENARIOS[scenario]
    done = injector.operations(trainer, where, step, tmp_path)
    assert sum(op.startswith(("replace", "fsync", "mkdir")) for op in done) >= 4
    if step == 4:  # the re-write moves the old copy aside first: the instant that used to lose it
        assert any(op.startswith("replace(step-00000004") for op in done)
    resumed = []
    for at in range(len(done)):
        image, op = injector.crash_image(trainer, where, step, at, tmp_path)
        assert op == done[at]
        resumed.append(injector.check_image(trainer, image, step, before=4))
        shutil.rmtree(image)
    assert resumed[-1] == step  # once the write is complete it is the newest


def test_a_run_resumes_from_the_moved_aside_copy_and_puts_it_back(base, tmp_path):
    trainer, where = base
    done = injector.operations(trainer, where, 4, tmp_path)
    at = next(i for i, op in enumerate(done) if op.startswith("replace(step-00000004"))
    image, _ = injector.crash_image(trainer, where, 4, at, tmp_path)
    assert not (image / "checkpoints" / "step-00000004").exists()
    again = phasetrain.Trainer.from_config("regression", [*injector.OVERRIDES, "run.steps=6", f"run.out_dir='{image}'"])
    path = again.resume(report=pytest.fail)
    assert path.name.startswith(".old-step-00000004") and again.step == 4
    assert again.fit().status == "completed"
    names = sorted(p.name for p in (image / "checkpoints").iterdir())
    assert names == ["step-00000004", "step-00000006"]  # put back at start-up, then pruned to keep=2


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(saves=st.lists(st.tuples(st.sampled_from([2, 4, 6, 8]), st.integers(0, 14)), min_size=1, max_size=4))
def test_random_crashes_in_a_sequence_of_writes_never_lose_the_newest_checkpoint(base, tmp_path, saves):
    """Saves of steps in any order (a resume goes back), each crashing at a random point or not
    (a point past its last operation), each crash followed by the next start's recovery."""
    trainer, where = base
    work = tmp_path / "seq"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(where, work)
    committed = {2, 4}
    for step, at in saves:
        image = tmp_path / "image"
        shutil.rmtree(image, ignore_errors=True)
        try:
            with injector.crash_after(at, watch=work, image=image):
                injector.save_at(trainer, work, step)
            committed.add(step)
            continue
        except injector.Crash:
            pass
        shutil.rmtree(work)
        image.rename(work)
        newest = store.latest_good(work)[1]["trainer"]["step"]
        assert newest in (max(committed), max(committed | {step}))
        store.recover(store.checkpoint_dir(work))
        assert store.latest_good(work)[1]["trainer"]["step"] == newest
        committed.add(newest)
    names = [p.name for p in store.checkpoint_dir(work).iterdir()]
    assert not [n for n in names if n.startswith((store.TMP, store.OLD, store.DEL))], names
