"""The PINN network options ``first_layer_scale``, ``fourier_features`` and ``fourier_scale``."""

from __future__ import annotations

import math

import pytest
import torch

import phasetrain
from phasetrain.plugins.pinn.network import PINNNet


def small(tmp_path, *extra: str) -> tuple[dict, list[str]]:
    """A tiny, quiet wave1d PINN run writing under ``tmp_path``."""
    data = {"task": {"use": "pinn"}, "residual": {"use": "wave1d"}}
    return data, [
        f"run.out_dir='{tmp_path / 'run'}'", "observers.console.quiet=true", "run.device='cpu'",
        "run.eval_every=0", "run.checkpoint_every=0", "run.threads=1", "task.hidden=12",
        "task.depth=2", "task.n_initial=32", "task.n_boundary=32", "sampler={use='sobol', n=64}",
        *extra,
    ]


def test_defaults_keep_the_plain_network():
    torch.manual_seed(3)
    plain = PINNNet([0.0, 0.0], [1.0, 1.0], 1, hidden=8, depth=2)
    torch.manual_seed(3)
    explicit = PINNNet(
        [0.0, 0.0], [1.0, 1.0], 1, hidden=8, depth=2, first_layer_scale=1.0, fourier_features=0, fourier_scale=1.0
    )
    assert plain.fourier is None and "fourier" not in dict(plain.named_buffers())
    assert plain.state_dict().keys() == explicit.state_dict().keys()
    for key, value in plain.state_dict().items():
        assert torch.equal(value, explicit.state_dict()[key]), key


def test_first_layer_scale_multiplies_only_the_first_layers_initial_weights():
    torch.manual_seed(5)
    plain = PINNNet([0.0, 0.0], [1.0, 1.0], 1, hidden=8, depth=2, activation="sin")
    torch.manual_seed(5)
    scaled = PINNNet([0.0, 0.0], [1.0, 1.0], 1, hidden=8, depth=2, activation="sin", first_layer_scale=4.0)
    torch.testing.assert_close(scaled.net[0].weight, 4.0 * plain.net[0].weight)
    assert torch.equal(scaled.net[2].weight, plain.net[2].weight)


def test_fourier_features_feed_cos_and_sin_of_the_normalised_input():
    net = PINNNet([-1.0, 0.0], [1.0, 2.0], 2, hidden=8, depth=1, fourier_features=5, fourier_scale=2.0)
    assert net.fourier.shape == (2, 5) and net.net[0].in_features == 10
    x = torch.tensor([[0.5, 0.25], [-1.0, 2.0]], dtype=torch.float64)
    z = (x - net.centre) / net.half_width
    zb = 2 * math.pi * z @ net.fourier
    with torch.no_grad():
        torch.testing.assert_close(net(x), net.net(torch.cat([torch.cos(zb), torch.sin(zb)], dim=1)))


@pytest.mark.parametrize(
    "options",
    [
        ["task.activation='sin'", "task.first_layer_scale=3.0"],
        ["task.fourier_features=6", "task.fourier_scale=1.5"],
    ],
)
def test_options_round_trip_through_checkpoints_and_load_model(tmp_path, options):
    data, sets = small(tmp_path, "run.steps=2", *options)
    trainer = phasetrain.Trainer.from_config(data, sets)
    trainer.fit()
    loaded = phasetrain.load_model(trainer.out_dir)
    saved = phasetrain.load_checkpoint(trainer.out_dir)["model"]
    if "task.fourier_features=6" in options:
        assert torch.equal(saved["fourier"], trainer.model.fourier)
        assert torch.equal(loaded.fourier, trainer.model.fourier)
    raw = torch.tensor([[0.0, 0.0], [0.3, 0.5], [1.0, 1.0], [0.75, 0.1]])  # (x, t)
    with torch.no_grad():
        assert torch.equal(loaded(raw), trainer.model.eval()(raw))
