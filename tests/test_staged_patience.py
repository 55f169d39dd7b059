"""A stage with ``patience`` ends once its loss stops improving; the rest of the run moves up."""

from __future__ import annotations

import phasetrain
from phasetrain.testing import HookRecorder

from .conftest import StopAt

# A PINN step is full-batch, so its loss is a plain function of the weights; SGD with a tiny
# learning rate leaves it all but constant: a stall.
STALL = "optimizer={use='sgd', lr=1e-12}, patience=PATIENCE, min_improvement=1e-3"
DATA = {"task": {"use": "pinn", "hidden": 8, "depth": 2, "n_initial": 8, "n_boundary": 8, "eval_grid": [5]},
        "residual": {"use": "burgers"}, "sampler": {"use": "sobol", "n": 16}}


def _sets(out, **patience):
    stages = (f"[{{name='a', steps=20, {STALL.replace('PATIENCE', str(patience.get('a', 3)))}}}, "
              f"{{name='b', {STALL.replace('PATIENCE', str(patience.get('b', 2)))}}}]")
    return [f"run.out_dir='{out}'", "observers.console.quiet=true", "run.steps=30", "run.eval_every=0",
            "run.checkpoint_every=0", f"schedule={{use='staged', stages={stages}}}"]


def test_a_stalled_stage_ends_early_and_a_stalled_last_stage_ends_the_run(tmp_path):
    recorder = HookRecorder()
    trainer = phasetrain.Trainer.from_config(DATA, _sets(tmp_path), plugins=[recorder])
    outcome = trainer.fit()
    # Stage a: best at step 0, no 0.1 % better loss by step 3 -> it ends after step 3. Stage b
    # starts at step 4 and ends after step 6: the run stops there.
    enters = [(e[1], e[2]) for e in recorder.of("phase_enter")]
    assert enters == [("a", None), ("b", "a")]
    assert [e[1] for e in recorder.of("pre_step")] == list(range(7))
    assert outcome.status == "stopped" and outcome.steps == 7
    again = phasetrain.Trainer.from_config(DATA, _sets(tmp_path))
    again.resume(report=lambda _m: None)
    assert again.fit().steps == 7  # it knows the run is over


def test_without_patience_stages_keep_their_length(tmp_path):
    recorder = HookRecorder()
    phasetrain.Trainer.from_config(DATA, [*_sets(tmp_path, a=0, b=0), "run.steps=23"], plugins=[recorder]).fit()
    assert [(e[1], e[2]) for e in recorder.of("phase_enter")] == [("a", None), ("b", "a")]
    assert recorder.of("phase_enter")[1] == ("phase_enter", "b", "a") and len(recorder.of("pre_step")) == 23
    assert [e for e in recorder.events if e[0] == "pre_step"][20] == ("pre_step", 20)


def test_a_run_resumed_in_a_stage_with_patience_ends_where_the_uninterrupted_one_does(tmp_path):
    whole = phasetrain.Trainer.from_config(DATA, _sets(tmp_path / "a"))
    whole.fit()
    for stop in (2, 5):
        out = tmp_path / f"b{stop}"
        phasetrain.Trainer.from_config(DATA, _sets(out), plugins=[StopAt(stop)]).fit()
        resumed = phasetrain.Trainer.from_config(DATA, _sets(out))
        resumed.resume(report=lambda _m: None)
        assert resumed.fit().steps == whole.state.step == 7
        assert resumed.schedule.ends == whole.schedule.ends == [4, 30]
