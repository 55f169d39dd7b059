"""Activation checkpointing in the lm task: recomputed blocks give the same gradients."""

from __future__ import annotations

import pytest
import torch

import phasetrain
from phasetrain.errors import BadInput
from phasetrain.plugins.tasks.lm import GPT, GPTConfig

TINY = ["task.n_layer=2", "task.n_embd=32", "task.n_head=4", "task.block_size=16", "task.batch_size=4"]


def gradients(model, idx, precision=None):
    model.zero_grad(set_to_none=True)
    context = torch.autocast("cpu", dtype=precision) if precision else torch.autocast("cpu", enabled=False)
    with context:
        logits = model(idx)
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), idx.roll(-1, 1).reshape(-1))
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("dropout", [0.0, 0.2])
@pytest.mark.parametrize("precision", [None, torch.bfloat16])
def test_checkpointed_blocks_give_identical_gradients(dropout, precision):
    cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=3, n_head=2, n_embd=16, dropout=dropout)
    torch.manual_seed(0)
    plain = GPT(cfg)
    recomputed = GPT(cfg, checkpointed=(0, 2))
    recomputed.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)  # dropout masks: checkpointing replays the same random state
    expected = gradients(plain.train(), idx, precision)
    torch.manual_seed(2)
    got = gradients(recomputed.train(), idx, precision)
    for name, grad in expected.items():
        assert torch.equal(grad, got[name]), name


def test_checkpointed_blocks_really_recompute_their_forward():
    cfg = GPTConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    model = GPT(cfg, checkpointed=(1,)).train()
    calls = [0, 0]
    for i, block in enumerate(model.blocks):
        block.register_forward_pre_hook(lambda *_a, i=i: calls.__setitem__(i, calls[i] + 1))
    gradients(model, torch.randint(0, 50, (2, 8)))
    assert calls == [1, 2]  # block 1 ran again during backward


def test_lm_training_with_checkpointed_activations_matches_plain_training(quiet):
    plain = phasetrain.Trainer.from_config("lm", [*quiet, *TINY, "run.steps=3"])
    plain.fit()
    ckpt_quiet = [q.replace("/run'", "/run-ckpt'") for q in quiet]
    recomputed = phasetrain.Trainer.from_config("lm", [*ckpt_quiet, *TINY, "run.steps=3", "task.checkpoint_activations=[0, 1]"])
    recomputed.fit()
    for a, b in zip(plain.model.parameters(), recomputed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_activations_outside_the_model_is_bad_input(quiet):
    with pytest.raises(BadInput, match="task.checkpoint_activations"):
        phasetrain.Trainer.from_config("lm", [*quiet, *TINY, "task.checkpoint_activations=[2]"])
