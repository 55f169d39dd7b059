"""Offload strategies: parking optimizer state on the host is the identity, and training with
offload gives bit for bit the same run as without."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import phasetrain
from phasetrain import hookimpl
from phasetrain.errors import BadInput, ConfigError
from phasetrain.plugins.offload import CPUOffload, OffloadOptions, PinnedCPUOffload, tree_map

STRATEGIES = {"cpu": CPUOffload, "cpu_pinned": PinnedCPUOffload}
STAGES = "schedule={use='staged', stages=[{name='adam', steps=5}, {name='predict', steps=4}, {name='more'}]}"
SMALL = ["task.n_train=256", "task.n_eval=64", "task.hidden=16", "task.batch_size=32"]


def flat(value):
    found = []
    tree_map(value, found.append)
    return found


def same_bits(a, b):
    """Same structure, and every tensor the same dtype, shape, device and bytes (NaNs included)."""
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
            and a.device == b.device and a.stride() == b.stride()
            and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same_bits(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_bits(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and (a == b or (a != a and b != b))


def snapshot(optimizer):
    return {p: tree_map(s, lambda t: t.clone()) for p, s in optimizer.state.items()}


# -- random optimizer states --------------------------------------------------------------------

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.bool, torch.complex64]


@st.composite
def tensors(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    raw = torch.randn(tuple(shape), generator=g, dtype=torch.float64) * 1e3
    if draw(st.booleans()) and raw.numel():
        raw.view(-1)[0] = draw(st.sampled_from([float("nan"), float("inf"), -0.0]))
    t = raw.to(dtype) if dtype != torch.complex64 else torch.complex(raw.float(), raw.float())
    if draw(st.booleans()) and t.dim() == 2:
        t = t.t()  # a non-contiguous view keeps its strides
    return t


leaves = st.one_of(tensors(), st.integers(-5, 5), st.floats(allow_nan=False), st.none())
states = st.dictionaries(
    st.sampled_from(["step", "exp_avg", "exp_avg_sq", "momentum_buffer", "old_dirs", "ro", "H_diag", "n_iter"]),
    st.one_of(leaves, st.lists(tensors(), max_size=3), st.tuples(tensors(), st.integers())),
    max_size=5,
)


@settings(max_examples=60, deadline=None)
@given(per_param=st.lists(states, min_size=0, max_size=3), kind=st.sampled_from(sorted(STRATEGIES)), prefetch=st.booleans())
def test_offload_then_restore_is_the_identity_bit_for_bit(per_param, kind, prefetch):
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in per_param] or [torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD(params, lr=0.1)
    for p, state in zip(params, per_param, strict=False):
        optimizer.state[p] = state
    before = snapshot(optimizer)
    offload = STRATEGIES[kind](OffloadOptions(), None)
    offload.park("main", optimizer)
    originals = {id(t) for state in per_param for t in flat(state)}
    kept = [t for state in optimizer.state.values() for t in flat(state)]  # alive, so ids stay unique
    host = {id(t) for t in kept}
    for state in optimizer.state.values():  # the optimizer now holds host copies, not the originals
        assert all(t.device.type == "cpu" and id(t) not in originals for t in flat(state))
    if prefetch:
        offload.prefetch()
    offload.restore_all()
    assert not host & {id(t) for state in optimizer.state.values() for t in flat(state)}  # copied back
    assert list(optimizer.state) == list(before)
    for p, state in before.items():
        assert same_bits(state, optimizer.state[p])
    assert offload.stats.bytes_in == offload.stats.bytes_out


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.Adam(ps, lr=0.01),
    lambda ps: torch.optim.AdamW(ps, lr=0.01, amsgrad=True),
    lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9),
    lambda ps: torch.optim.LBFGS(ps, history_size=3, max_iter=4),
], ids=["adam", "adamw-amsgrad", "sgd-momentum", "lbfgs"])
@pytest.mark.parametrize("kind", sorted(STRATEGIES))
def test_real_optimizer_state_survives_offload_and_keeps_training_identically(make, kind):
    def run(offload):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        optimizer = make(list(model.parameters()))
        x, y = torch.randn(16, 3), torch.randn(16, 1)

        def closure():
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        for step in range(6):
            if offload is not None and step == 3:
                before = snapshot(optimizer)
                offload.park("main", optimizer)
                offload.restore_all()
                assert all(same_bits(before[p], optimizer.state[p]) for p in before)
            optimizer.step(closure)
        return list(model.parameters()), optimizer

    plain, _ = run(None)
    moved, optimizer = run(STRATEGIES[kind](OffloadOptions(), None))
    assert all(torch.equal(a, b) for a, b in zip(plain, moved, strict=True))


def test_an_optimizer_that_steps_while_offloaded_gets_its_state_back_first():
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    offload = CPUOffload(OffloadOptions(), None)
    offload.park("main", optimizer)
    parked = [id(t) for s in optimizer.state.values() for t in flat(s)]
    optimizer.step()
    assert offload.stats.restores_on_step == 1 and not offload.offloaded
    assert not {id(t) for s in optimizer.state.values() for t in flat(s)} & set(parked)


# -- whole runs ---------------------------------------------------------------------------------


class Predicted:
    """Stands in for a predicted-step plugin: phase 'predict' takes no optimizer step."""

    @hookimpl
    def run_step(self, trainer, phase):
        if phase.name != "predict":
            return None
        with torch.no_grad():
            p = next(trainer.model.parameters())
            p.mul_(0.999)  # the weights still move, as predicted steps move them
        return {"loss": torch.tensor(0.0)}


class Placement:
    """Records where the optimizers' state lives at each step."""

    def __init__(self):
        self.parked = []

    @hookimpl(trylast=True)
    def post_step(self, trainer):
        self.parked.append(trainer.component("offload").offloaded)


def run(quiet, tmp, offload, *extra, plugins=()):
    args = [a.replace("/run'", f"/{tmp}'") for a in quiet]
    t = phasetrain.Trainer.from_config("regression", [*args, *SMALL, "run.steps=12", STAGES, f"offload={offload}", *extra],
                                       plugins=list(plugins))
    t.fit()
    return t


def assert_same_run(a, b):
    for x, y in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(x, y)
    for key, opt in a.optimizers.items():
        for p, q in zip(opt.state.values(), b.optimizers[key].state.values(), strict=True):
            assert same_bits(p, q)


@pytest.mark.parametrize("offload", sorted(STRATEGIES))
def test_training_with_offload_equals_training_without_it(quiet, offload):
    plain = run(quiet, "plain", "none")
    moved = run(quiet, offload, offload)
    assert_same_run(plain, moved)
    # The 'predict' stage steps for real here: the state came back just in time.
    assert moved.component("offload").stats.offloads == 1 and moved.component("offload").stats.restores_on_step == 1


@pytest.mark.parametrize("offload", sorted(STRATEGIES))
def test_state_stays_offloaded_through_a_predicted_phase(quiet, offload):
    placement = Placement()
    plain = run(quiet, "plain", "none", plugins=[Predicted()])
    moved = run(quiet, offload, offload, plugins=[Predicted(), placement])
    assert_same_run(plain, moved)
    assert placement.parked == [False] * 5 + [True] * 4 + [False] * 3
    stats = moved.component("offload").stats
    assert stats.restores_on_step == 0 and stats.restores == 1
    assert stats.prefetches == (1 if offload == "cpu_pinned" else 0)  # at the phase's last step
    assert stats.bytes_out == stats.bytes_in > 0


@pytest.mark.parametrize("offload", sorted(STRATEGIES))
def test_a_checkpoint_written_while_offloaded_resumes_to_the_same_run(quiet, offload):
    class StopAt:
        @hookimpl
        def post_step(self, trainer, step):
            if step + 1 == 7:  # inside 'predict'
                trainer.stop_requested = True

    plain = run(quiet, "plain", "none", plugins=[Predicted()])
    stopped_plain = run(quiet, "stopped", "none", plugins=[Predicted(), StopAt()])
    stopped = run(quiet, offload, offload, plugins=[Predicted(), StopAt()])
    assert stopped.component("offload").stats.offloads == 1 and stopped.component("offload").stats.restores == 1  # at train_end
    saved = phasetrain.load_checkpoint(stopped.out_dir)
    reference = phasetrain.load_checkpoint(stopped_plain.out_dir)
    assert saved["trainer"]["step"] == reference["trainer"]["step"] == 7
    assert same_bits(saved["optimizers"], reference["optimizers"])
    args = [a.replace("/run'", f"/{offload}'") for a in quiet]
    resumed = phasetrain.Trainer.from_config("regression", [*args, *SMALL, "run.steps=12", STAGES, f"offload={offload}"],
                                             plugins=[Predicted()])
    resumed.resume(report=lambda _m: None)
    resumed.fit()
    assert_same_run(plain, resumed)


HYBRID = ["schedule={use='hybrid', warmup_steps=6, min_full_steps=3, confidence_threshold=0.0, "
          "initial_predict_steps=4, correct_steps=3}", "dynamics={use='linear', window=3}"]


def test_the_hybrid_schedule_parks_the_state_through_predict_and_matches_no_offload(quiet):
    plain = run(quiet, "plain", "none", *HYBRID, "run.steps=24")
    moved = run(quiet, "pinned", "cpu_pinned", *HYBRID, "run.steps=24")
    assert moved.schedule.predicted_steps > 0
    assert_same_run(plain, moved)
    stats = moved.component("offload").stats
    assert stats.offloads >= 1 and stats.restores_on_step == 0 and stats.bytes_out == stats.bytes_in


def test_offload_phases_the_schedule_lacks_are_reported(quiet):
    t = phasetrain.Trainer.from_config("regression", [*quiet, "run.steps=2", STAGES, "offload={use='cpu', phases=['predcit']}"])
    with pytest.raises(BadInput, match="offload.phases.*adam, predict, more"):
        t.fit()


def test_offload_needs_at_least_one_phase(quiet):
    with pytest.raises(ConfigError, match="offload.phases"):
        phasetrain.Trainer.from_config("regression", [*quiet, "offload={use='cpu', phases=[]}"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", sorted(STRATEGIES))
def test_offload_frees_device_memory_and_puts_the_state_back(kind):
    model = torch.nn.Linear(1024, 1024).cuda()
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(8, 1024, device="cuda")).sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    before = snapshot(optimizer)
    torch.cuda.synchronize()
    used = torch.cuda.memory_allocated()
    offload = STRATEGIES[kind](OffloadOptions(), None)
    offload.park("main", optimizer)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() < used - 2 * 1024 * 1024 * 4 * 0.9
    host = [t for s in optimizer.state.values() for t in flat(s) if t.numel() > 1]
    assert all(t.device.type == "cpu" and t.is_pinned() == (kind == "cpu_pinned") for t in host)
    offload.prefetch()
    offload.restore_all()
    torch.cuda.synchronize()
    assert all(same_bits(before[p], optimizer.state[p]) for p in before)
