"""The ``lm`` task: a character-level causal transformer (nanoGPT-like) on the shipped corpus.

The corpus (Python standard-library sources, see ``corpus.py``) is split 90/10 into train and
held-out text. Batch ``i`` takes ``batch_size`` random windows of ``block_size + 1`` characters,
drawn from a generator seeded with (seed, i), so the data position is the count of batches.
Evaluation averages the loss over fixed held-out windows.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch
from torch import nn
from torch.nn import functional as F

from phasetrain.config import in_range, non_negative, probability
from phasetrain.plugins.tasks import corpus


@attrs.define
class LMOptions:
    """Sizes have upper bounds far above what the task is for, so that a typo fails at start-up."""

    n_layer: int = attrs.field(default=2, validator=in_range(1, 1024))
    n_head: int = attrs.field(default=4, validator=in_range(1, 1024))
    n_embd: int = attrs.field(default=128, validator=in_range(1, 2**16))
    block_size: int = attrs.field(default=64, validator=in_range(1, 2**20))  # context length
    dropout: float = attrs.field(default=0.0, validator=probability)
    batch_size: int = attrs.field(default=32, validator=in_range(1, 2**20))
    eval_batches: int = attrs.field(default=8, validator=in_range(1, 2**20))
    corpus_chars: int = attrs.field(default=0, validator=non_negative)  # 0: the whole corpus
    checkpoint_activations: list[int] = attrs.field(factory=list)  # block indices to recompute

    @n_embd.validator
    def _heads_divide(self, attribute: Any, value: int) -> None:
        from phasetrain.config import FieldValueError

        if value % self.n_head:
            raise FieldValueError(attribute.name, f"must be divisible by n_head={self.n_head}, got {value}")


@attrs.define
class GPTConfig:
    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, T, C)
        # (B, T, C) -> (B, nh, T, hs): attention runs per head
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd),
            nn.GELU(),
            nn.Linear(4 * cfg.n_embd, cfg.n_embd),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """A small decoder-only transformer; ``checkpointed`` blocks recompute activations in
    backward (torch.utils.checkpoint) to trade compute for memory."""

    def __init__(self, cfg: GPTConfig, checkpointed: tuple[int, ...] = ()):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.head.weight = self.tok.weight  # weight tying
        self.checkpointed = frozenset(checkpointed)
        self.apply(self._init)
        for name, p in self.named_parameters():  # scaled init of residual projections (GPT-2)
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, 0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.tok(idx) + self.pos(pos))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            if i in self.checkpointed and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.head(self.ln_f(x))  # (B, T, vocab)


VOCAB = sorted(corpus.ALLOWED)


class LanguageModel:
    def __init__(self, options: LMOptions, ctx: Any):
        self.options = o = options
        self.device = ctx.device
        self._seed = ctx.seed
        text = corpus.load()
        if o.corpus_chars:
            text = text[: o.corpus_chars]
        lookup = {c: i for i, c in enumerate(VOCAB)}
        data = torch.tensor([lookup.get(c, lookup["?"]) for c in text], dtype=torch.long)
        split = int(0.9 * len(data))
        self.train_data, self.eval_data = data[:split], data[split:]
        if len(self.eval_data) <= o.block_size + 1:
            from phasetrain.errors import BadInput

            raise BadInput(f"task.corpus_chars: {o.corpus_chars} leaves no held-out text for block_size {o.block_size}")
        bad = [i for i in o.checkpoint_activations if not 0 <= i < o.n_layer]
        if bad:
            from phasetrain.errors import BadInput

            raise BadInput(f"task.checkpoint_activations: block indices {bad} outside 0..{o.n_layer - 1}")
        cfg = GPTConfig(len(VOCAB), o.block_size, o.n_layer, o.n_head, o.n_embd, o.dropout)
        model = GPT(cfg, tuple(o.checkpoint_activations)).to(self.device)
        self.model = ctx.component("precision").prepare(model)
        g = torch.Generator().manual_seed(ctx.seed + 104729)
        n = o.eval_batches * o.batch_size
        self._eval_starts = torch.randint(len(self.eval_data) - o.block_size - 1, (n,), generator=g)

    def _windows(self, data: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        offsets = torch.arange(self.options.block_size + 1)
        chunk = data[starts[:, None] + offsets]  # (B, T + 1)
        chunk = chunk.to(self.device, non_blocking=True)
        return chunk[:, :-1], chunk[:, 1:]

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self._seed * 1_000_003 + index)
        high = len(self.train_data) - self.options.block_size - 1
        starts = torch.randint(high, (self.options.batch_size,), generator=g)
        return self._windows(self.train_data, starts)

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        logits = model(x)
        if logits.dtype != torch.float64:  # reduced-precision logits: the loss in float32
            logits = logits.float()
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        total = 0.0
        for chunk in self._eval_starts.split(self.options.batch_size):
            total += self.loss(model, self._windows(self.eval_data, chunk)).item() * len(chunk)
        loss = total / len(self._eval_starts)
        return {"eval_loss": loss, "eval_bpc": loss / math.log(2)}
