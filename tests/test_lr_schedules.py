"""Learning-rate schedules: the warmup-stable-decay shape."""

from __future__ import annotations

import math
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from phasetrain.plugins.lr_schedules import WSDOptions, wsd


def learning_rates(options: WSDOptions, steps: int) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = wsd(options, types.SimpleNamespace(optimizer=optimizer, steps=steps))
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


@settings(max_examples=40, deadline=None)
@given(steps=st.integers(10, 400), warmup=st.integers(0, 5), fraction=st.floats(0.05, 0.5),
       floor=st.floats(0.0, 0.5), shape=st.sampled_from(["sqrt", "linear", "cosine"]))
def test_wsd_warms_up_holds_then_decays_to_its_floor(steps, warmup, fraction, floor, shape):
    lrs = learning_rates(WSDOptions(warmup_steps=warmup, decay_fraction=fraction, min_lr_ratio=floor, shape=shape), steps)
    decay = round(fraction * steps)
    start = steps - decay
    assert all(a < b for a, b in zip(lrs[:warmup], lrs[1:warmup + 1]))  # a rising warm-up
    assert all(lr == 1.0 for lr in lrs[warmup:start])  # stable
    tail = lrs[start:]
    assert all(b <= a for a, b in zip(tail, tail[1:]))  # then never rises
    assert all(floor - 1e-12 <= lr <= 1.0 for lr in tail)
    if decay > 1:
        x = (decay - 1) / decay  # the last step's progress through the decay
        end = {"sqrt": 1 - math.sqrt(x), "linear": 1 - x, "cosine": 0.5 * (1 + math.cos(math.pi * x))}[shape]
        assert tail[-1] == pytest.approx(floor + (1 - floor) * end)
