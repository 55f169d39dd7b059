"""Batches through a real ``torch.utils.data.DataLoader`` that resumes exactly, mid-epoch too.

The run's data position is the kernel's count of micro-batches consumed
(``trainer.state.batches``), saved in every checkpoint. For a map-style dataset, batch ``i`` is a
pure function of ``(run.seed, i)``: epoch ``e = i // batches_per_epoch`` reads the dataset in the
order of a permutation drawn from ``(seed, e)``, and :class:`EpochBatches` (the loader's batch
sampler) starts at any ``i``. A resumed run, or a rolled-back one, builds a loader that starts at
its position, so the next batch is the one the uninterrupted run read, with any number of
workers and without any loader state in checkpoints.

Randomness inside a dataset (augmentations) stays exact too: in the training process it draws
from the run's generators, which checkpoints carry; in a worker process the generators
(``random``, ``numpy``, ``torch``) are seeded from ``(seed, rank, i)`` before batch ``i`` is read,
so it does not matter which worker reads it or how far a worker had got.

Under torchrun, global batch ``i`` is the same list of indices on every process and process ``r``
of ``N`` reads ``indices[r::N]``, the items ``DistributedSampler`` would give it: the processes'
parts are disjoint and together they are the one-process batch ``i``.

An iterable dataset cannot be indexed. It is read in passes ("epochs", ``set_epoch(e)`` called
when the dataset has it); process ``r`` of ``N`` with ``W`` workers reads every ``N*W``-th item
from offset ``r*W + worker``. Its position is restored by count: a resumed run reads and drops
the batches it had consumed (with the run's generators put back afterwards).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

_MIX = 0x9E3779B97F4A7C15  # spreads (seed, epoch) pairs over the seed space


def mixed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions)."""
    value = 0
    for part in parts:
        value = (value * _MIX + part + 1) % (1 << 63)
    return value


@runtime_checkable
class SetsEpoch(Protocol):
    """A dataset told which pass over it begins (as with ``DistributedSampler.set_epoch``)."""

    def set_epoch(self, epoch: int) -> None: ...


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Put the training process's generators back as they were after the block."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0]), np.random.set_state(states[1]), torch.set_rng_state(states[2])


def seed_worker(seed: int) -> None:
    """Seed a loader worker's generators (never the training process's)."""
    if get_worker_info() is not None:
        random.seed(seed), np.random.seed(seed % 2**32), torch.manual_seed(seed)


def is_map_style(dataset: Any) -> bool:
    return not isinstance(dataset, IterableDataset) and hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")


def is_dataset(obj: Any) -> bool:
    return isinstance(obj, IterableDataset) or is_map_style(obj) or (isinstance(obj, Dataset) and hasattr(obj, "__iter__"))


class Indices(list):
    """The dataset indices of one batch, with the seed of the worker that reads it."""

    seed: int = 0


class EpochBatches:
    """The batch sampler: from batch ``start`` on, this process's part of every global batch."""

    def __init__(self, n: int, batch_size: int, *, seed: int, shuffle: bool, drop_last: bool, rank: int,
                 size: int, start: int):
        self.n, self.batch_size, self.seed, self.shuffle, self.drop_last = n, batch_size, seed, shuffle, drop_last
        self.rank, self.size, self.start = rank, size, start
        self.per_epoch = per_epoch(n, batch_size, drop_last)

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(mixed(self.seed, epoch))).tolist()

    def __iter__(self) -> Iterator[Indices]:
        index = self.start
        while True:
            epoch, first = divmod(index, self.per_epoch)
            order, b = self.order(epoch), self.batch_size
            for pos in range(first, self.per_epoch):
                batch = order[pos * b : (pos + 1) * b]
                if pad := -len(batch) % self.size:  # the last, short batch: padded from the start, as DistributedSampler does
                    batch += (order * math.ceil(pad / len(order)))[:pad]
                part = Indices(batch[self.rank :: self.size])
                part.seed = mixed(self.seed, self.rank, index)
                index += 1
                yield part


def per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


class Seeded(Dataset):
    """A map-style dataset whose worker generators are seeded per batch (see the module docstring)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self._many = getattr(dataset, "__getitems__", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __getitems__(self, indices: list[int]) -> list[Any]:
        seed_worker(getattr(indices, "seed", 0))
        return self._many(list(indices)) if self._many else [self.dataset[i] for i in indices]


class Stream(IterableDataset):
    """An iterable dataset read in passes, each process and worker taking its own items."""

    def __init__(self, dataset: Any, *, seed: int, rank: int, size: int, passes: int | None = None):
        self.dataset, self.seed, self.rank, self.size, self.passes = dataset, seed, rank, size, passes

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        part, parts = self.rank * workers + worker, self.size * workers
        for epoch in itertools.count() if self.passes is None else range(self.passes):
            if isinstance(self.dataset, SetsEpoch):
                self.dataset.set_epoch(epoch)
            seed_worker(mixed(self.seed, epoch, part))
            read = 0
            for read, item in enumerate(itertools.islice(iter(self.dataset), part, None, parts), 1):  # noqa: B007
                yield item
            if not read and self.passes is None:
                raise ValueError(f"an iterable dataset gave process {self.rank}, worker {worker} no items in pass {epoch}")


def to_device(batch: Any, device: torch.device, dtype: torch.dtype, non_blocking: bool) -> Any:
    """Tensors of ``batch`` on ``device``; floating ones in ``dtype`` (the precision's)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, dtype if batch.is_floating_point() else None, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return type(batch)({k: to_device(v, device, dtype, non_blocking) for k, v in batch.items()})
    if isinstance(batch, (list, tuple)):
        items = [to_device(v, device, dtype, non_blocking) for v in batch]
        return type(batch)(*items) if hasattr(batch, "_fields") else type(batch)(items)
    return batch


def loader_kwargs(options: Any, seed: int) -> dict[str, Any]:
    """The DataLoader settings both loaders share. The generator keeps the loader from drawing
    its workers' base seed from the run's generator (which would change the training stream)."""
    workers = options.num_workers
    return {"num_workers": workers, "pin_memory": options.pin_memory, "generator": torch.Generator().manual_seed(seed),
            **({"prefetch_factor": options.prefetch_factor} if workers else {})}


class TrainStream:
    """Micro-batch ``index`` of the run for this process, read through a DataLoader."""

    def __init__(self, dataset: Any, options: Any, *, seed: int, rank: int, size: int, device: torch.device,
                 dtype: torch.dtype):
        self.dataset, self.options, self.seed, self.rank, self.size = dataset, options, seed, rank, size
        self.device, self.dtype = device, dtype
        self.map_style = is_map_style(dataset)
        self.part_size = options.batch_size // size
        self._iter: Iterator[Any] | None = None
        self._next = -1

    @property
    def per_epoch(self) -> int | None:
        """Global batches per epoch (``None`` for an iterable dataset)."""
        o = self.options
        return per_epoch(len(self.dataset), o.batch_size, o.drop_last) if self.map_style else None

    def get(self, index: int) -> Any:
        if self._iter is None or index != self._next:
            self._start(index)
        batch = next(self._iter)  # type: ignore[arg-type]
        self._next = index + 1
        return to_device(batch, self.device, self.dtype, self.options.pin_memory)

    def _start(self, index: int) -> None:
        self.close()
        o = self.options
        common = loader_kwargs(o, mixed(self.seed, self.rank, index))
        if self.map_style:
            sampler = EpochBatches(len(self.dataset), o.batch_size, seed=self.seed, shuffle=o.shuffle,
                                   drop_last=o.drop_last, rank=self.rank, size=self.size, start=index)
            self._iter = iter(DataLoader(Seeded(self.dataset), batch_sampler=sampler, **common))
            return
        stream = Stream(self.dataset, seed=self.seed, rank=self.rank, size=self.size)
        self._iter = iter(DataLoader(stream, batch_size=self.part_size, **common))
        with preserved_rng():  # restored by count: the batches consumed before are read and dropped
            for _ in range(index):
                next(self._iter)

    def close(self) -> None:
        """Stop the loader's workers (they stop on their own when the process ends)."""
        self._iter, self._next = None, -1


def eval_loader(dataset: Any, options: Any, *, seed: int, rank: int, size: int) -> DataLoader:
    """This process's part of a held-out dataset, in order (``r::N``, nothing padded or repeated)."""
    batch_size = options.eval_batch_size or options.batch_size
    common = loader_kwargs(options, mixed(seed, rank, -1))
    common["persistent_workers"] = options.persistent_workers and options.num_workers > 0
    if is_map_style(dataset):
        part = dataset if size == 1 else torch.utils.data.Subset(dataset, range(rank, len(dataset), size))
        return DataLoader(part, batch_size=batch_size, shuffle=False, **common)
    return DataLoader(Stream(dataset, seed=seed, rank=rank, size=size, passes=1), batch_size=batch_size, **common)
