"""Models and datasets of the ``digits`` and ``breast-cancer`` presets: data scikit-learn ships,
so nothing is downloaded.

Each dataset function returns a ``TensorDataset`` of one split. The held-out split is a fixed,
stratified 20 % (``train_test_split`` with ``random_state=0``), the same whatever the run's seed.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

SPLITS = ("train", "test")


def _split(x: torch.Tensor, y: torch.Tensor, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``split`` part of (x, y), and the training inputs (for statistics)."""
    from sklearn.model_selection import train_test_split

    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    x_train, x_test, y_train, y_test = train_test_split(x.numpy(), y.numpy(), test_size=0.2, random_state=0,
                                                        stratify=y.numpy())
    x_part, y_part = (x_train, y_train) if split == "train" else (x_test, y_test)
    return torch.from_numpy(x_part), torch.from_numpy(y_part), torch.from_numpy(x_train)


def digits(split: str = "train") -> TensorDataset:
    """scikit-learn's 1,797 handwritten digits, 8x8 pixels in [0, 16], as (1, 8, 8) images in [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    y = torch.tensor(data.target, dtype=torch.long)
    x_part, y_part, _train = _split(x, y, split)
    return TensorDataset(x_part, y_part)


def breast_cancer(split: str = "train") -> TensorDataset:
    """scikit-learn's Wisconsin breast-cancer table: 569 rows of 30 features, 2 classes. Features
    are standardised with the training split's mean and deviation."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    x_part, y_part, x_train = _split(x, y, split)
    mean, std = x_train.mean(0), x_train.std(0)
    return TensorDataset((x_part - mean) / std, y_part)


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions and a small classifier: about 30K parameters."""

    def __init__(self, width: int = 32, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),  # (B, w, 8, 8)
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),  # (B, 2w, 8, 8)
            nn.MaxPool2d(2),  # (B, 2w, 4, 4)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.25), nn.Linear(2 * width * 16, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 8, 8) -> (B, classes)
        return self.head(self.features(x))


class MLP(nn.Module):
    """A multilayer perceptron for tables: ``inputs`` features to ``classes`` scores."""

    def __init__(self, inputs: int = 30, hidden: int = 64, depth: int = 2, classes: int = 2, dropout: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(inputs if i == 0 else hidden, hidden), nn.ReLU(), nn.Dropout(dropout)]
        self.body = nn.Sequential(*layers, nn.Linear(hidden if depth else inputs, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, inputs) -> (B, classes)
        return self.body(x)
