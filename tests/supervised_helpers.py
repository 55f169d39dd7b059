"""Models and datasets the supervised tests name by import path (``tests.supervised_helpers:...``).

The data are small and made from a seed; ``Augmented`` draws random noise in ``__getitem__`` (so
exact resume covers randomness inside a dataset); ``Logged`` records which indices each process
read (for the torchrun test); ``Stream`` is an iterable dataset.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset, TensorDataset


def tensors(n: int = 96, features: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return x, y


def table(n: int = 96, features: int = 6, seed: int = 0) -> TensorDataset:
    return TensorDataset(*tensors(n, features, seed))


class Net(nn.Module):
    def __init__(self, features: int = 6, hidden: int = 16, classes: int = 2, dropout: float = 0.1):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class NoForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(6, 2)


def per_item_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(output, target, reduction="none")  # not reduced: an error


class Augmented(Dataset):
    """Each item gets fresh noise from torch's global generator (a random augmentation)."""

    def __init__(self, n: int = 96):
        self.x, self.y = tensors(n)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i] + 0.1 * torch.randn(self.x.shape[1]), self.y[i]


class Logged(Dataset):
    """Appends ``rank index`` lines to ``$LOG_DIR/reads-RANK.txt`` for every item read."""

    def __init__(self, n: int = 64):
        self.x, self.y = tensors(n)
        self.path = Path(os.environ["LOG_DIR"]) / f"reads-{os.environ.get('RANK', '0')}.txt"

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        with self.path.open("a") as f:
            f.write(f"{i}\n")
        return self.x[i], self.y[i]


class Stream(IterableDataset):
    """The ``table`` items one by one, in an order that depends on the epoch."""

    def __init__(self, n: int = 40):
        self.x, self.y = tensors(n)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        order = torch.randperm(len(self.y), generator=torch.Generator().manual_seed(self.epoch))
        for i in order.tolist():
            yield self.x[i], self.y[i]
