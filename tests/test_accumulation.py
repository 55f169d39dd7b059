"""Gradient accumulation: N micro-batches per step update the weights like one batch N times as big."""

from __future__ import annotations

import attrs
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import phasetrain
from phasetrain import Component, hookimpl
from phasetrain.config import positive
from phasetrain.registry import plugin


@attrs.define
class ChunkOptions:
    chunk: int = attrs.field(default=4, validator=positive)  # rows per chunk
    chunks_per_batch: int = attrs.field(default=1, validator=positive)


class Chunks:
    """A task whose batch ``i`` is chunks ``i*k .. i*k+k-1`` of a fixed data set, so a batch of
    k chunks is exactly the concatenation of k consecutive one-chunk batches."""

    def __init__(self, options: ChunkOptions, ctx):
        self.options = options
        dtype = getattr(ctx.component("precision"), "dtype", torch.float32)
        g = torch.Generator().manual_seed(ctx.seed)
        self.x = torch.randn(512, 3, generator=g, dtype=torch.float64).to(dtype)
        self.y = (self.x.sin().sum(1, keepdim=True) + 0.1 * torch.randn(512, 1, generator=g, dtype=torch.float64).to(dtype))
        model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        self.model = ctx.component("precision").prepare(model)

    def batch(self, index):
        k, c = self.options.chunks_per_batch, self.options.chunk
        rows = torch.arange(index * k * c, (index + 1) * k * c) % len(self.x)
        return self.x[rows], self.y[rows]

    def loss(self, model, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(model(x), y)

    def evaluate(self, model):
        return {"eval_loss": self.loss(model, (self.x, self.y)).item()}


class Provider:
    @hookimpl
    def phasetrain_components(self):
        return [Component("task", "chunks", Chunks, ChunkOptions)]


PROVIDER = plugin(Provider(), "chunks-task", "tests")


def train(tmp, chunk, per_batch, accum, optimizer, precision, steps=5):
    config = {
        "run": {"steps": steps, "out_dir": str(tmp), "device": "cpu", "grad_accum_steps": accum},
        "task": {"use": "chunks", "chunk": chunk, "chunks_per_batch": per_batch},
        "optimizer": optimizer,
        "precision": {"use": precision},
        "observers": {"console": {"quiet": True}},
    }
    trainer = phasetrain.Trainer.from_config(config, plugins=[PROVIDER])
    trainer.fit()
    return trainer


OPTIMIZERS = {
    "sgd": {"use": "sgd", "lr": 0.1, "momentum": 0.9},
    "adam": {"use": "adam", "lr": 0.01},
}
TOLERANCE = {"fp32": 2e-6, "fp64": 1e-12}


@pytest.mark.parametrize("precision", sorted(TOLERANCE))
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(accum=st.integers(2, 4), chunk=st.integers(1, 6))
def test_accumulated_micro_batches_equal_one_big_batch(tmp_path_factory, precision, optimizer, accum, chunk):
    base = tmp_path_factory.mktemp("accum")
    micro = train(base / "micro", chunk, 1, accum, OPTIMIZERS[optimizer], precision)
    big = train(base / "big", chunk, accum, 1, OPTIMIZERS[optimizer], precision)
    assert micro.state.batches == 5 * accum and big.state.batches == 5  # the data position
    for a, b in zip(micro.model.parameters(), big.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=TOLERANCE[precision], atol=TOLERANCE[precision])


def test_accumulation_is_not_the_same_as_one_micro_batch(tmp_path):
    # The comparison above could pass vacuously if accumulation were ignored; it is not.
    micro = train(tmp_path / "a", 2, 1, 3, OPTIMIZERS["sgd"], "fp64")
    single = train(tmp_path / "b", 2, 1, 1, OPTIMIZERS["sgd"], "fp64")
    differs = [not torch.allclose(a, b) for a, b in zip(micro.model.parameters(), single.model.parameters(), strict=True)]
    assert any(differs)


def test_accumulated_loss_is_the_mean_over_the_micro_batches(tmp_path):
    micro = train(tmp_path / "a", 3, 1, 4, OPTIMIZERS["sgd"], "fp64", steps=1)
    big = train(tmp_path / "b", 3, 4, 1, OPTIMIZERS["sgd"], "fp64", steps=1)
    assert abs(micro.outcome.metrics["loss"] - big.outcome.metrics["loss"]) < 1e-12
