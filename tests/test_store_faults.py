"""The local store under faults: checkpoints that pass their checksum but are wrong, edited
meta.json, symbolic links and special files, newer versions, a full or read-only disk."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import subprocess
import threading

import pytest
import torch

import phasetrain
from phasetrain import cli, hookimpl
from phasetrain.errors import BadInput, CheckpointError, TrainingFailed
from phasetrain.plugins import store

STEPS = ["run.steps=6", "run.checkpoint_every=3", "task.n_train=128", "task.n_eval=32"]


class Probe:
    """A plugin with state of its own, whose restore refuses a poisoned value."""

    @hookimpl
    def checkpoint(self, state):
        state["probe"] = {"value": 1}

    @hookimpl
    def restore(self, state):
        if state["probe"]["value"] == "poison":
            raise KeyError("poison")


def trained(quiet, *extra, plugins=()):
    trainer = phasetrain.Trainer.from_config("regression", [*quiet, *STEPS, *extra], plugins=list(plugins))
    trainer.fit()
    return trainer


def ckpt(trainer, step):
    return trainer.out_dir / "checkpoints" / store.name_for(step)


def forge(path, change_state=None, change_meta=None):
    """Rewrite a checkpoint with its checksums made to match, as a careful vandal would."""
    meta = json.loads((path / "meta.json").read_text())
    if change_state is not None:
        state = torch.load(path / "state.pt", weights_only=True)
        change_state(state)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        (path / "state.pt").write_bytes(buffer.getvalue())
        meta["sha256"]["state.pt"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    if change_meta is not None:
        change_meta(meta)
    meta["meta_sha256"] = store.meta_checksum(meta)
    (path / "meta.json").write_text(json.dumps(meta))


def resumed_step(quiet, plugins=()):
    reports = []
    again = phasetrain.Trainer.from_config("regression", [*quiet, *STEPS], plugins=list(plugins))
    again.resume(report=reports.append)
    return again, reports


def first_tensor(tree):
    return next(k for k, v in tree.items() if isinstance(v, torch.Tensor))


def poison_rng(state):
    state["rng"]["per_rank"][0]["torch"] = torch.zeros(3, dtype=torch.uint8)


# Each damage passes the checksums and is caught when loading or when applying the state.
DAMAGE = {
    "empty model": (lambda s: s.__setitem__("model", {}), "no model weights"),
    "no optimizers": (lambda s: s.pop("optimizers"), "'optimizers' is missing"),
    "a wrong shape": (lambda s: s["model"].__setitem__(first_tensor(s["model"]), torch.zeros(3, 3)), "size mismatch"),
    "a missing weight": (lambda s: s["model"].pop(first_tensor(s["model"])), "Missing key"),
    "junk random state": (poison_rng, "does not fit this run"),
    "NaN weights": (lambda s: s["model"][first_tensor(s["model"])].fill_(float("nan")), "non-finite values in model"),
    "inf in Adam's moments": (lambda s: [t.fill_(float("inf")) for st in s["optimizers"]["main"]["state"].values()
                                         for k, t in st.items() if k == "exp_avg_sq"], "non-finite values in optimizers"),
    "a counter of the wrong type": (lambda s: s["trainer"].__setitem__("step", "6"), "counters step"),
    "a negative data position": (lambda s: s["trainer"].__setitem__("batches", -3), "counters batches"),
    "a plugin's state it cannot restore": (lambda s: s["plugins"]["probe"].__setitem__("value", "poison"),
                                           "its state does not apply: KeyError"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_state_that_passes_its_checksum_but_does_not_apply_falls_back(quiet, damage):
    change, expected = DAMAGE[damage]
    trainer = trained(quiet, plugins=[Probe()])
    forge(ckpt(trainer, 6), change_state=change)
    again, reports = resumed_step(quiet, plugins=[Probe()])
    assert again.step == 3 and again.resumed_from.name == "step-00000003"
    assert len(reports) == 1 and "step-00000006" in reports[0] and expected in reports[0], reports
    assert again.fit().status == "completed"


@pytest.mark.parametrize("edit, expected", [
    (lambda m: m["config"]["optimizer"].__setitem__("lr", 0.5), "meta.json: checksum mismatch"),  # not re-sealed
    (lambda m: m.pop("meta_sha256"), "meta.json: checksum mismatch"),
])
def test_an_edited_meta_json_is_refused(quiet, edit, expected):
    trainer = trained(quiet)
    path = ckpt(trainer, 6) / "meta.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    again, reports = resumed_step(quiet)
    assert again.step == 3 and expected in reports[0]


@pytest.mark.parametrize("edit, expected", [
    (lambda m: m.__setitem__("sha256", ["x"]), "sha256 missing or of the wrong type"),
    (lambda m: m.pop("config"), "config missing or of the wrong type"),
    (lambda m: m.__setitem__("step", 9), "says step 9"),
    (lambda m: m["sha256"].pop("state.pt"), "no checksum of state.pt"),
])
def test_a_resealed_meta_json_of_the_wrong_shape_is_refused(quiet, edit, expected):
    trainer = trained(quiet)
    forge(ckpt(trainer, 6), change_meta=edit)
    again, reports = resumed_step(quiet)
    assert again.step == 3 and expected in reports[0], reports


def test_when_no_checkpoint_applies_the_resume_exits_2_listing_each(quiet, capsys, tmp_path):
    trainer = trained(quiet)
    for step in (3, 6):
        forge(ckpt(trainer, step), change_state=DAMAGE["NaN weights"][0])
    rc = cli.main(["run", "regression", *[w for s in [*quiet, *STEPS] for w in ("--set", s)], "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("phasetrain: error: no good checkpoint in ")
    assert err[-1].count("non-finite values in model") == 2 and "Traceback" not in "".join(err)


# ---------------------------------------------------------------------------------------------
# Links and special files
# ---------------------------------------------------------------------------------------------


def test_a_symlink_to_another_runs_checkpoint_is_refused_and_never_pruned(quiet, tmp_path):
    other = phasetrain.Trainer.from_config("regression", [*quiet, *STEPS, f"run.out_dir='{tmp_path / 'other'}'"])
    other.fit()
    trainer = trained(quiet)
    planted = trainer.out_dir / "checkpoints" / "step-00099999"
    planted.symlink_to(ckpt(other, 6), target_is_directory=True)
    inside = trainer.out_dir / "checkpoints" / "step-00088888"
    inside.symlink_to(ckpt(trainer, 3), target_is_directory=True)  # inside the run, but not that step
    again, reports = resumed_step(quiet)
    assert again.step == 6
    assert any("step-00099999" in r and "outside" in r for r in reports), reports
    assert any("step-00088888" in r and "says step 3" in r for r in reports), reports
    again.config.run.keep_checkpoints = 1
    again.config.run.steps = 9
    again.fit()
    assert planted.is_symlink() and (ckpt(other, 6) / "state.pt").exists()


@pytest.mark.parametrize("special", ["fifo", "dev-zero"])
@pytest.mark.parametrize("name", ["state.pt", "meta.json"])
def test_special_files_are_refused_without_blocking(quiet, special, name):
    trainer = trained(quiet)
    target = ckpt(trainer, 6) / name
    target.unlink()
    if special == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/zero")
    result = {}
    worker = threading.Thread(target=lambda: result.update(zip(("again", "reports"), resumed_step(quiet))), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "reading a special file blocked"
    assert result["again"].step == 3
    assert ("not a regular file" if special == "fifo" else "outside") in result["reports"][0]


# ---------------------------------------------------------------------------------------------
# Versions
# ---------------------------------------------------------------------------------------------


def test_a_checkpoint_of_a_newer_phasetrain_or_torch_warns_naming_both_versions(quiet):
    trainer = trained(quiet)
    forge(ckpt(trainer, 6), change_meta=lambda m: m["versions"].update(phasetrain="9.9.9", torch="99.0"))
    with pytest.warns(store.NewerCheckpoint) as caught:
        again, _ = resumed_step(quiet)
    text = str(caught[0].message)
    assert again.step == 6
    assert "phasetrain 9.9.9 (this is " in text and f"torch 99.0 (this is {torch.__version__})" in text


def test_a_checkpoint_in_a_newer_format_stops_the_resume(quiet):
    trainer = trained(quiet)
    forge(ckpt(trainer, 6), change_meta=lambda m: m.update(format=3))
    with pytest.raises(BadInput, match="format 3 by phasetrain .*reads format 2: upgrade phasetrain") as err:
        resumed_step(quiet)
    assert not isinstance(err.value, CheckpointError)  # not skipped for an older one


# ---------------------------------------------------------------------------------------------
# Disk full and read-only directories
# ---------------------------------------------------------------------------------------------


def failing(monkeypatch, name, code, when):
    real = getattr(os, name)

    def operation(*args, **kwargs):
        if when(*args):
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, operation)


def test_a_full_disk_during_a_checkpoint_keeps_the_last_one_leaves_nothing_and_resumes_exactly(
        quiet, tmp_path, monkeypatch):
    whole = phasetrain.Trainer.from_config("regression", [*quiet[1:], *STEPS, f"run.out_dir='{tmp_path / 'whole'}'"])
    whole.fit()
    writing_step_6 = lambda fd: "step-00000006" in os.readlink(f"/proc/self/fd/{fd}")  # noqa: E731
    failing(monkeypatch, "fsync", errno.ENOSPC, writing_step_6)
    trainer = phasetrain.Trainer.from_config("regression", [*quiet, *STEPS])
    with pytest.raises(TrainingFailed, match=r"checkpoint of step 6 .*No space left on device; .*step-00000003 is kept"):
        trainer.fit()
    monkeypatch.undo()
    names = sorted(p.name for p in (trainer.out_dir / "checkpoints").iterdir())
    assert names == ["step-00000003"] and trainer.outcome.status == "failed"
    again, reports = resumed_step(quiet)
    assert again.step == 3 and not reports and again.fit().status == "completed"
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[name], tensor), name


def test_a_full_disk_for_the_metrics_file_fails_cleanly(quiet, monkeypatch, capsys):
    trainer = trained(quiet)
    failing(monkeypatch, "fsync", errno.ENOSPC, lambda *_a: True)
    rc = cli.main(["run", "regression", *[w for s in [*quiet, *STEPS, "run.steps=9"] for w in ("--set", s)], "--resume"])
    monkeypatch.undo()
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("phasetrain: training failed: ") and "cannot write" in err[-1]
    assert str(trainer.out_dir) in err[-1] and "No space left on device" in err[-1]
    assert [p.name for p in trainer.out_dir.iterdir() if ".tmp" in p.name] == []


def test_a_read_only_run_directory_exits_2_before_training(quiet, monkeypatch, capsys):
    trainer = trained(quiet)
    before = {p: p.read_bytes() for p in trainer.out_dir.rglob("*") if p.is_file()}
    inside = str(trainer.out_dir)
    failing(monkeypatch, "open", errno.EROFS, lambda path, *_a: str(path).startswith(inside) and _a and _a[0] & os.O_CREAT)
    for resume in ([], ["--resume"]):
        rc = cli.main(["run", "regression", *[w for s in [*quiet, *STEPS, "run.steps=9"] for w in ("--set", s)], *resume])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and err[-1].startswith("phasetrain: error: run.out_dir: cannot write"), err
        assert "Read-only file system" in err[-1]
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in trainer.out_dir.rglob("*") if p.is_file()} == before


def test_leftovers_of_a_crashed_write_are_removed_when_the_next_run_starts(quiet):
    trainer = trained(quiet)
    root = trainer.out_dir / "checkpoints"
    (root / ".tmp-step-00000009-424242").mkdir()
    (root / ".del-step-00000001-424242").mkdir()
    (trainer.out_dir / ".metrics.jsonl.tmp-424242").write_text("{")
    shutil.copytree(ckpt(trainer, 6), root / ".old-step-00000006-424242")  # its re-write did arrive
    again, _ = resumed_step(quiet)
    again.config.run.steps = 7
    again.fit()
    assert sorted(p.name for p in root.iterdir()) == ["step-00000003", "step-00000006", "step-00000007"]
    assert not list(trainer.out_dir.glob(".metrics.jsonl.tmp-*"))


def test_a_checkpoint_resume_skipped_as_bad_is_never_pruned_in_place_of_a_good_one(quiet):
    trainer = trained(quiet, "run.checkpoint_every=2")
    forge(ckpt(trainer, 6), change_state=DAMAGE["NaN weights"][0])
    again = phasetrain.Trainer.from_config("regression", [*quiet, *STEPS, "run.checkpoint_every=1",
                                                          "run.keep_checkpoints=1", "run.steps=5"])
    again.resume(report=lambda _m: None)
    assert again.step == 4
    again.fit()  # writes step 5 and prunes to one: the new one, not it for the bad step 6
    assert store.latest_good(trainer.out_dir)[1]["trainer"]["step"] == 5
    assert sorted(p.name for p in (trainer.out_dir / "checkpoints").iterdir()) == ["step-00000005", "step-00000006"]


# ---------------------------------------------------------------------------------------------
# A real full and read-only file system (tmpfs), where this machine lets us mount one
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path):
    where = tmp_path / "mnt"
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(where)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_real_full_then_read_only_file_system(tmpfs, capsys):
    run = ["run", "regression", "--set", "run.steps=40", "--set", "run.checkpoint_every=5", "--set", "run.log_every=1",
           "--set", "observers.console.quiet=true", "--set", "run.device='cpu'", "--set", f"run.out_dir='{tmpfs / 'run'}'"]
    filler = tmpfs / "filler"
    filler.write_bytes(b"\0" * 780 * 1024)  # leaves room for about two checkpoints
    assert cli.main(run) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "is kept" in err[0], err
    kept = sorted(p.name for p in (tmpfs / "run" / "checkpoints").iterdir())
    assert kept and not [n for n in kept if n.startswith(".")]
    filler.unlink()
    assert cli.main([*run, "--resume"]) == 0
    assert store.latest_good(tmpfs / "run")[1]["trainer"]["step"] == 40
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    capsys.readouterr()
    assert cli.main([*run[:2], "--set", "run.steps=45", *run[4:], "--resume"]) == 2
    assert "Read-only file system" in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_metrics_file_that_is_a_fifo_is_refused_without_blocking(quiet, capsys):
    trainer = trained(quiet)
    (trainer.out_dir / "metrics.jsonl").unlink()
    os.mkfifo(trainer.out_dir / "metrics.jsonl")
    rc = cli.main(["run", "regression", *[w for s in [*quiet, *STEPS, "run.steps=9"] for w in ("--set", s)], "--resume"])
    assert rc == 2 and "metrics.jsonl: not a regular file" in capsys.readouterr().err.strip().splitlines()[-1]
