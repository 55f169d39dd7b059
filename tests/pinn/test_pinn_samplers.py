"""Collocation samplers: domain, counts, reproducibility, stratification, adaptivity."""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phasetrain.plugins.pinn.samplers import (
    SAMPLERS,
    LHSSampler,
    RADSampler,
    RARDSampler,
    SobolSampler,
    UniformSampler,
    residual_density,
)

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAMES = ["uniform", "sobol", "lhs", "rad", "rar-d"]

# Options that make every sampler change its points within a few steps.
ACTIVE_OPTIONS = {
    "uniform": {"resample_every": 2},
    "sobol": {"resample_every": 2},
    "lhs": {"resample_every": 2},
    "rad": {"every": 2, "pool_factor": 3},
    "rar-d": {"every": 2, "add": 5, "max_points": 60, "pool_factor": 3},
}


def peaked_residual(points: torch.Tensor) -> torch.Tensor:
    """Synthetic residual (M,) concentrated near (0.8, 0.2, ...) of the unit box."""
    centre = torch.full((points.shape[1],), 0.2, dtype=torch.float64)
    centre[0] = 0.8
    return torch.exp(-((points - centre) ** 2).sum(dim=1) / (2 * 0.05**2))


def in_peak(points: torch.Tensor) -> torch.Tensor:
    """Bool (M,): inside the 0.2-wide square around the residual's peak (4 % of the 2-D unit box)."""
    return ((points[:, 0] - 0.8).abs() < 0.1) & ((points[:, 1] - 0.2).abs() < 0.1)


boxes = st.integers(1, 4).flatmap(
    lambda d: st.tuples(
        st.lists(st.floats(-5, 5), min_size=d, max_size=d),
        st.lists(st.floats(0.1, 5), min_size=d, max_size=d),
    ).map(lambda lw: (lw[0], [lo + w for lo, w in zip(lw[0], lw[1])]))
)


# ------------------------------------------------------------ basics
def test_registry():
    assert sorted(SAMPLERS) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_points_in_domain_with_requested_count(name):
    @SETTINGS
    @given(box=boxes, n=st.integers(1, 200), seed=st.integers(0, 2**31 - 1))
    def check(box, n, seed):
        lower, upper = box
        sampler = SAMPLERS[name](lower, upper, n, seed)
        pts = sampler.points()
        assert pts.shape == (n, len(lower)) and pts.dtype == torch.float64 and pts.device.type == "cpu"
        lo = torch.tensor(lower, dtype=torch.float64)
        hi = torch.tensor(upper, dtype=torch.float64)
        assert bool(((pts >= lo) & (pts <= hi)).all())
        # Stays in the domain after updates, too.
        for step in range(1, 5):
            sampler.update(step, peaked_residual) if sampler.adaptive else sampler.update(step)
        pts = sampler.points()
        assert bool(((pts >= lo) & (pts <= hi)).all())

    check()


@pytest.mark.parametrize("name", NAMES)
def test_seed_determines_points(name):
    a = SAMPLERS[name]((0, 0), (1, 1), 64, 11).points()
    b = SAMPLERS[name]((0, 0), (1, 1), 64, 11).points()
    c = SAMPLERS[name]((0, 0), (1, 1), 64, 12).points()
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name", NAMES)
def test_points_returns_a_copy(name):
    sampler = SAMPLERS[name]((0, 0), (1, 1), 16, 0)
    pts = sampler.points()
    pts.fill_(7.0)
    assert float(sampler.points().max()) <= 1.0


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_rejected(name):
    with pytest.raises(TypeError):
        SAMPLERS[name]((0,), (1,), 8, 0, not_an_option=3)


# ---------------------------------------------------- reproducibility
def run(sampler, steps: range) -> list[torch.Tensor]:
    history = []
    for step in steps:
        sampler.update(step, peaked_residual)
        history.append(sampler.points())
    return history


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_resumes_identically(name):
    options = ACTIVE_OPTIONS[name]
    original = SAMPLERS[name]((0.0, 0.0), (1.0, 1.0), 40, 3, **options)
    run(original, range(1, 6))  # some history, including changes
    state = original.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)  # checkpoints must survive serialisation
    buffer.seek(0)
    expected = run(original, range(6, 14))

    fresh = SAMPLERS[name]((0.0, 0.0), (1.0, 1.0), 40, 999, **options)  # different seed on purpose
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    resumed = run(fresh, range(6, 14))
    assert len({tuple(p.flatten().tolist()) for p in expected}) > 1  # the continuation does change points
    for want, got in zip(expected, resumed):
        assert torch.equal(want, got)
    assert fresh.num_updates == original.num_updates > 0


def test_state_dict_rejects_mismatch():
    state = UniformSampler((0, 0), (1, 1), 8, 0).state_dict()
    with pytest.raises(ValueError):
        LHSSampler((0, 0), (1, 1), 8, 0).load_state_dict(state)
    with pytest.raises(ValueError):
        UniformSampler((0, 0), (2, 1), 8, 0).load_state_dict(state)


# --------------------------------------------------- non-adaptive update
@pytest.mark.parametrize("name", ["uniform", "sobol", "lhs"])
def test_static_samplers_only_change_when_asked(name):
    still = SAMPLERS[name]((0,), (1,), 32, 0)
    before = still.points()
    assert not any(still.update(step, peaked_residual) for step in range(0, 50))
    assert torch.equal(before, still.points())

    moving = SAMPLERS[name]((0,), (1,), 32, 0, resample_every=10)
    changed = [step for step in range(0, 35) if moving.update(step)]
    assert changed == [10, 20, 30]
    assert not torch.equal(before, moving.points())


# ------------------------------------------------------- stratification
def strata(points: torch.Tensor, lower, upper, bins: int) -> torch.Tensor:
    unit = (points - torch.tensor(lower, dtype=torch.float64)) / (
        torch.tensor(upper, dtype=torch.float64) - torch.tensor(lower, dtype=torch.float64)
    )
    return torch.floor(unit * bins).long()


@SETTINGS
@given(n=st.integers(1, 300), d=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_lhs_one_point_per_stratum(n, d, seed):
    lower, upper = [-1.0] * d, [1.0] * d
    sampler = LHSSampler(lower, upper, n, seed, resample_every=1)
    for _ in range(2):  # also after a redraw
        idx = strata(sampler.points(), lower, upper, n)
        for k in range(d):
            assert torch.equal(torch.sort(idx[:, k]).values, torch.arange(n))
        sampler.update(1)


@SETTINGS
@given(m=st.integers(1, 10), d=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_sobol_is_stratified(m, d, seed):
    """2^m scrambled Sobol' points: one point per 1-D stratum, and the first two
    coordinates form a (0, m, 2)-net (one point in every 2^-a x 2^-(m-a) box)."""
    n = 2**m
    lower, upper = [0.0] * d, [1.0] * d
    pts = SobolSampler(lower, upper, n, seed).points()
    for k in range(d):
        assert torch.equal(torch.sort(strata(pts, lower, upper, n)[:, k]).values, torch.arange(n))
    if d >= 2:
        for a in range(m + 1):
            ix = torch.floor(pts[:, 0] * 2**a).long()
            iy = torch.floor(pts[:, 1] * 2 ** (m - a)).long()
            cells = ix * 2 ** (m - a) + iy
            assert torch.equal(torch.sort(cells).values, torch.arange(n))


def test_sobol_more_uniform_than_iid():
    """Worst 1-D stratum occupancy: exactly 1 for Sobol, typically > 1 for i.i.d. points."""
    n, lower, upper = 1024, [0.0, 0.0], [1.0, 1.0]
    sobol = SobolSampler(lower, upper, n, 0).points()
    iid = UniformSampler(lower, upper, n, 0).points()
    sobol_max = torch.bincount(strata(sobol, lower, upper, 32)[:, 0] * 32 + strata(sobol, lower, upper, 32)[:, 1]).max()
    iid_max = torch.bincount(strata(iid, lower, upper, 32)[:, 0] * 32 + strata(iid, lower, upper, 32)[:, 1]).max()
    assert int(sobol_max) == 1 and int(iid_max) > 1


# ------------------------------------------------------------------ RAD
def test_rad_concentrates_where_residual_is_large():
    n = 2000
    rad = RADSampler((0, 0), (1, 1), n, 0, every=5, pool_factor=10)
    uniform_share = float(in_peak(rad.points()).double().mean())  # before adapting: uniform
    assert rad.update(5, peaked_residual)
    rad_share = float(in_peak(rad.points()).double().mean())
    assert uniform_share < 0.08
    assert rad_share > 5 * uniform_share
    # With k = c = 1 half of the density mass sits on the peak (mean(r / mean r) = c = 1),
    # and ~90 % of the Gaussian lies in the square: expected share ~0.47 when sampling with
    # replacement (without replacement the pool's ~4 % of peak candidates caps it lower).
    with_repl = RADSampler((0, 0), (1, 1), n, 0, every=5, replacement=True)
    with_repl.update(5, peaked_residual)
    assert float(in_peak(with_repl.points()).double().mean()) > 0.35
    # A large uniform floor c (or k = 0) undoes the concentration.
    flat = RADSampler((0, 0), (1, 1), n, 0, every=5, c=1000.0)
    flat.update(5, peaked_residual)
    assert float(in_peak(flat.points()).double().mean()) < 0.08
    flat_k = RADSampler((0, 0), (1, 1), n, 0, every=5, k=0.0)
    flat_k.update(5, peaked_residual)
    assert float(in_peak(flat_k.points()).double().mean()) < 0.08


def test_rad_schedule_and_residual_calls():
    calls = []

    def residual_fn(points):
        calls.append(points.shape)
        return peaked_residual(points)

    rad = RADSampler((0, 0), (1, 1), 50, 0, every=4, pool_factor=3)
    changed = [step for step in range(0, 13) if rad.update(step, residual_fn)]
    assert changed == [4, 8, 12]
    assert calls == [(150, 2)] * 3  # residuals only evaluated when due, on pool_factor * n candidates
    assert rad.num_points == 50


def test_rad_without_replacement_has_distinct_points():
    rad = RADSampler((0, 0), (1, 1), 300, 1, every=1, pool_factor=2)
    rad.update(1, peaked_residual)
    assert torch.unique(rad.points(), dim=0).shape[0] == 300
    with_repl = RADSampler((0, 0), (1, 1), 300, 1, every=1, pool_factor=2, replacement=True, c=0.0)
    with_repl.update(1, peaked_residual)
    assert torch.unique(with_repl.points(), dim=0).shape[0] < 300  # heavy residual -> repeats


def test_adaptive_samplers_validate_residuals():
    rad = RADSampler((0, 0), (1, 1), 10, 0, every=1)
    with pytest.raises(ValueError, match="expected"):
        rad.update(1, lambda p: torch.ones(3))
    with pytest.raises(ValueError, match="non-finite"):
        rad.update(1, lambda p: torch.full((p.shape[0],), float("nan")))
    with pytest.raises(ValueError):
        rad.update(1, None)
    # (M, 1) and negative values are accepted (magnitudes are used).
    assert rad.update(1, lambda p: -peaked_residual(p)[:, None])


# ---------------------------------------------------------------- RAR-D
def test_rard_appends_in_high_residual_region_until_cap():
    n = 200
    rard = RARDSampler((0, 0), (1, 1), n, 0, every=3, add=50, max_points=420)
    initial = rard.points()
    sizes = []
    for step in range(1, 19):
        rard.update(step, peaked_residual)
        sizes.append(rard.num_points)
    assert sizes[2] == 250 and sizes[5] == 300 and sizes[-1] == 420  # capped: 400 + 20
    pts = rard.points()
    assert torch.equal(pts[:n], initial)  # existing points are kept
    added = pts[n:]
    assert float(in_peak(added).double().mean()) > 0.8  # k = 2, c = 0 by default
    assert not rard.update(21, peaked_residual)  # full


def test_rard_defaults():
    rard = RARDSampler((0,), (1,), 100, 0)
    assert rard.add == 10 and rard.max_points == 200 and (rard.k, rard.c) == (2.0, 0.0)
    with pytest.raises(ValueError):
        RARDSampler((0,), (1,), 100, 0, max_points=50)


# ----------------------------------------------------- density helper
@SETTINGS
@given(
    r=st.lists(st.one_of(st.just(0.0), st.floats(1e-6, 1e6)), min_size=1, max_size=50),
    k=st.floats(0, 3),
    c=st.one_of(st.just(0.0), st.floats(1e-3, 5)),
    scale=st.floats(1e-3, 1e3),
)
def test_residual_density_properties(r, k, c, scale):
    r = torch.tensor(r, dtype=torch.float64)
    p = residual_density(r, k, c)
    assert p.shape == r.shape and bool((p >= 0).all())
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-9)
    assert torch.allclose(residual_density(scale * r, k, c), p, rtol=1e-9, atol=1e-12)  # scale invariant
    order = torch.argsort(r)
    assert bool((p[order].diff() >= -1e-12).all())  # larger residual, no smaller probability
    if c > 0 and float(r.max()) > 0:
        # ratio of extremes follows (r^k/mean + c): a floor of c keeps every point possible
        assert float(p.min()) > 0


def test_residual_density_formula_on_example():
    r = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
    # |r|^2 = (0, 1, 9), mean 10/3 -> weights (0, 0.3, 2.7) + 1 = (1, 1.3, 3.7), total 6
    assert torch.allclose(residual_density(r, 2.0, 1.0), torch.tensor([1.0, 1.3, 3.7], dtype=torch.float64) / 6.0)
    assert torch.allclose(residual_density(torch.zeros(4), 1.0, 0.0), torch.full((4,), 0.25, dtype=torch.float64))
