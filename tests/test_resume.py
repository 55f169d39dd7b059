"""Resume equals an uninterrupted run, bit for bit; bad checkpoints are refused."""

from __future__ import annotations

import pickle

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import phasetrain
from phasetrain import hookimpl
from phasetrain.errors import BadInput, CheckpointError
from phasetrain.plugins.store import meta_checksum


class StopAt:
    def __init__(self, step):
        self.step = step

    @hookimpl
    def post_step(self, trainer, step):
        if step + 1 == self.step:
            trainer.stop_requested = True


def final_state(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def interrupted_then_resumed(preset, overrides, stop):
    first = phasetrain.Trainer.from_config(preset, overrides, plugins=[StopAt(stop)])
    assert first.fit().status == "interrupted"
    second = phasetrain.Trainer.from_config(preset, overrides)
    second.resume(report=lambda _m: None)
    assert second.step == stop
    assert second.fit().status == "completed"
    return second


CASES = {
    "single": ("regression", ["run.steps=24", "lr_schedule.use='cosine'"]),
    "staged-lbfgs": ("regression-lbfgs", ["run.steps=24", "task.n_train=256"]),
    "ema-and-clipping": ("regression", ["run.steps=24", "run.eval_every=5", "averaging={use='ema', decay=0.9}",
                                        "grad_clip={use='norm', max_norm=0.05}"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stop=st.integers(1, 23))
def test_resume_equals_uninterrupted(case, stop, tmp_path_factory):
    preset, extra = CASES[case]
    if case == "staged-lbfgs":
        extra = [*extra, "schedule.stages=[{name='adam', steps=16}, {name='lbfgs', optimizer={use='lbfgs', max_iter=5}}]"]
    base = tmp_path_factory.mktemp("resume")
    common = [*extra, "observers.console.quiet=true", "run.device='cpu'"]
    whole = phasetrain.Trainer.from_config(preset, [*common, f"run.out_dir='{base / 'a'}'"])
    whole.fit()
    resumed = interrupted_then_resumed(preset, [*common, f"run.out_dir='{base / 'b'}'"], stop)
    for (name, a), b in zip(final_state(whole).items(), final_state(resumed).values(), strict=True):
        assert torch.equal(a, b), f"{name} differs after resuming at step {stop}"
    assert resumed.state.phase_step == whole.state.phase_step  # counted on across the resume
    if case == "ema-and-clipping":  # the average, and the weights the run trained (not the average)
        for a, b in zip(whole.component("averaging").average, resumed.component("averaging").average, strict=True):
            assert torch.equal(a, b), f"the average differs after resuming at step {stop}"
        assert whole.last_eval == resumed.last_eval
    for key, opt in resumed.optimizers.items():
        sa, sb = whole.optimizers[key].state_dict()["state"], opt.state_dict()["state"]
        for pid in sa:
            for field, value in sa[pid].items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(value, sb[pid][field]), f"{key} state {field} differs"


def test_lm_resume_continues_the_same_data_order(quiet):
    args = [*quiet, "run.steps=6", "task.n_layer=1", "task.n_embd=32", "task.block_size=16", "task.batch_size=4"]
    whole = phasetrain.Trainer.from_config("lm", args)
    whole.fit()
    args_b = [a.replace("/run'", "/run-b'") for a in args]
    resumed = interrupted_then_resumed("lm", args_b, 3)
    for a, b in zip(whole.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_checkpoints_are_kept_to_the_configured_number(quiet, tmp_path):
    trainer = phasetrain.Trainer.from_config(
        "regression", [*quiet, "run.steps=10", "run.checkpoint_every=2", "run.keep_checkpoints=2"]
    )
    trainer.fit()
    names = sorted(p.name for p in (trainer.out_dir / "checkpoints").iterdir())
    assert names == ["step-00000008", "step-00000010"]


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_good_one(quiet):
    trainer = phasetrain.Trainer.from_config("regression", [*quiet, "run.steps=6", "run.checkpoint_every=3"])
    trainer.fit()
    latest = trainer.out_dir / "checkpoints" / "step-00000006" / "state.pt"
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    latest.write_bytes(bytes(data))
    reports = []
    again = phasetrain.Trainer.from_config("regression", [*quiet, "run.steps=6", "run.checkpoint_every=3"])
    path = again.resume(report=reports.append)
    assert path.name == "step-00000003" and again.step == 3
    assert "checksum mismatch" in reports[0] and "step-00000006" in reports[0]


def test_truncated_and_missing_files_are_refused(quiet):
    trainer = phasetrain.Trainer.from_config("regression", [*quiet, "run.steps=2"])
    trainer.fit()
    ckpt = trainer.out_dir / "checkpoints" / "step-00000002"
    state = ckpt / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        phasetrain.load_checkpoint(ckpt)
    (ckpt / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="no good checkpoint"):
        phasetrain.load_checkpoint(trainer.out_dir)


def test_a_malicious_pickle_is_refused_and_never_runs(quiet, tmp_path):
    import hashlib
    import json

    trainer = phasetrain.Trainer.from_config("regression", [*quiet, "run.steps=2"])
    trainer.fit()
    ckpt = trainer.out_dir / "checkpoints" / "step-00000002"
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    payload = pickle.dumps({"model": Evil()})
    import io
    import zipfile

    buf = io.BytesIO()  # the torch.save zip layout, with a hostile data.pkl
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/version", "3\n")
    (ckpt / "state.pt").write_bytes(buf.getvalue())
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["sha256"]["state.pt"] = hashlib.sha256(buf.getvalue()).hexdigest()  # checksums forged too
    meta["meta_sha256"] = meta_checksum(meta)
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="refused to load"):
        phasetrain.load_checkpoint(ckpt)
    assert not marker.exists()


def test_resume_with_a_changed_model_is_refused_listing_keys(quiet):
    phasetrain.Trainer.from_config("regression", [*quiet, "run.steps=2"]).fit()
    changed = phasetrain.Trainer.from_config("regression", [*quiet, "run.steps=4", "task.hidden=32"])
    with pytest.raises(BadInput, match="task.hidden"):
        changed.resume()
    allowed = phasetrain.Trainer.from_config("regression", [*quiet, "run.steps=4", "run.log_every=1"])
    allowed.resume(report=lambda _m: None)
    assert allowed.fit().steps == 4


def test_load_model_returns_the_trained_module_in_eval_mode(quiet):
    trainer = phasetrain.Trainer.from_config("regression", [*quiet, "run.steps=5"])
    trainer.fit()
    model = phasetrain.load_model(trainer.out_dir)
    assert not model.training
    x = torch.randn(3, 8)
    assert torch.equal(model(x), trainer.model.eval()(x))



class LearningRates:
    """The learning rate each step uses."""

    def __init__(self):
        self.lr = {}

    @hookimpl
    def pre_step(self, trainer, step):
        self.lr[step] = trainer.optimizer.param_groups[0]["lr"]


def planned_rates(overrides, steps):
    """The learning rates a schedule built for ``steps`` steps gives steps 0..steps (the last:
    where its plan ends), without training."""
    trainer = phasetrain.Trainer.from_config("regression", [*overrides, f"run.steps={steps}"])
    rates = []
    for _ in range(steps + 1):
        rates.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    return rates


SCHEDULES = {  # name -> (config, whether its shape depends on the length of the run)
    "constant": ("{use='constant'}", False),
    "cosine": ("{use='cosine'}", True),
    "cosine-warmup": ("{use='cosine', warmup_steps=3}", True),
    "step": ("{use='step', step_size=4, gamma=0.5}", False),
    "exponential": ("{use='exponential', gamma=0.9}", False),
    "onecycle": ("{use='onecycle'}", True),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_resuming_with_more_steps_continues_every_schedule_as_documented(quiet, capsys, name):
    schedule, shaped = SCHEDULES[name]
    overrides = [*quiet, f"lr_schedule={schedule}"]
    phasetrain.Trainer.from_config("regression", [*overrides, "run.steps=10"]).fit()
    capsys.readouterr()
    seen = LearningRates()
    longer = phasetrain.Trainer.from_config("regression", [*overrides, "run.steps=20"], plugins=[seen])
    longer.resume(report=pytest.fail)
    assert longer.fit().status == "completed" and longer.step == 20
    noted = "was planned for 10 steps when the run started" in capsys.readouterr().err
    assert noted == shaped
    if shaped:  # it keeps the plan it was made with, then holds where that plan ends
        end = planned_rates(overrides, 10)[10]
        assert [seen.lr[s] for s in range(10, 20)] == [end] * 10
    else:  # the length of the run does not shape it: as if it had been planned for 20 steps
        assert [seen.lr[s] for s in range(10, 20)] == pytest.approx(planned_rates(overrides, 20)[10:20])
