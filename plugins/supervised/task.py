"""The ``supervised`` task: any ``nn.Module`` on any dataset of ``(input, target)`` pairs.

Built from import paths (``imports.py``), read through DataLoaders that resume exactly
(``loading.py``), measured with torchmetrics (``measures.py``). The model is built with the run;
the data, the loss and the metrics are resolved and checked right after it, on one probe batch,
so a dataset that does not fit the model, a loss that is not a scalar or a metric that does not
match the outputs is an error naming its field before the first step. A run built only to read
a model back (``load_model``: ``ctx.model_only``) builds the model alone; the rest is resolved
on first use.

Items are ``(input, target)`` pairs; ``input`` may be a tensor or a tuple/dict of tensors and is
passed to the model as ``model(input)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, MutableMapping
from typing import Any

import torch
import torchmetrics
from torch import nn
from torch.utils.data import default_collate

from phasetrain import hookimpl
from phasetrain.errors import CheckpointError
from phasetrain.plugins.supervised import loading, measures
from phasetrain.plugins.supervised.imports import Resolver
from phasetrain.plugins.supervised.options import SupervisedOptions

KEY = "supervised"  # this task's key in checkpoint state
ORDER = ("batch_size", "shuffle", "drop_last")  # the loader options that decide which batch comes when
PROBE = 4  # items in the probe batch


def _shape(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


class Supervised:
    """The task (see the module docstring)."""

    def __init__(self, options: SupervisedOptions, ctx: Any):
        self.options = o = options
        self.resolver = Resolver(ctx)
        for field in ("model", "train_data"):
            if not getattr(o, field):
                raise self.resolver.error(field, "is required: name an import path such as 'mypkg.nets:Net'")
        self.seed, self.device, self.strategy = ctx.seed, ctx.device, ctx.strategy
        precision = ctx.component("precision")
        self.dtype = getattr(precision, "dtype", torch.float32)
        self.autocast = precision.autocast if precision is not None else contextlib.nullcontext
        model = self.resolver.build("model", o.model, ("model_args", o.model_args),
                                    lambda m: isinstance(m, nn.Module), "a torch.nn.Module")
        self.model = precision.prepare(model.to(self.device)) if precision is not None else model.to(self.device)
        if self.strategy.size > 1 and o.loader.batch_size % self.strategy.size:
            raise self.resolver.error("loader.batch_size", f"{o.loader.batch_size} does not split evenly over "
                                      f"{self.strategy.size} processes (each reads batch_size / N items)")
        self._ready = False
        if not ctx.model_only:
            self._setup()

    # -- set-up: data, loss and metrics, checked on a probe batch ---------------------------------

    def _setup(self) -> None:
        if self._ready:
            return
        o, r = self.options, self.resolver
        train = r.build("train_data", o.train_data, ("train_args", o.train_args), loading.is_dataset, "a Dataset")
        val = r.build("val_data", o.val_data, ("val_args", o.val_args), loading.is_dataset, "a Dataset") if o.val_data else None
        rank, size = self.strategy.rank, self.strategy.size
        self.train = loading.TrainStream(train, o.loader, seed=self.seed, rank=rank, size=size, device=self.device,
                                         dtype=self.dtype)
        self.loss_fn = measures.loss_function(o.loss, o.loss_args, r)
        output, target = self._probe(train)
        if self.train.per_epoch == 0:
            raise r.error("loader.drop_last", f"leaves no batch: train_data has {len(train)} items, fewer than "
                          f"batch_size ({o.loader.batch_size})")
        self.metrics = measures.build_metrics(o.metrics, o.metric_args, measures.classes(output), r, self.device)
        self._check_metrics(output, target)
        self.val = loading.eval_loader(val, o.loader, seed=self.seed, rank=rank, size=size) if val is not None else None
        self.mean_loss = torchmetrics.MeanMetric().to(self.device)
        self._ready = True

    def _probe(self, dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the model and the loss on a few items; return the output and the target."""
        r = self.resolver
        with loading.preserved_rng():  # reading items may draw random numbers: the run's stream stays as it was
            if loading.is_map_style(dataset):
                if len(dataset) == 0:
                    raise r.error("train_data", "the dataset is empty")
                items = [dataset[i] for i in range(min(PROBE, len(dataset)))]
            else:
                items = list(zip(range(PROBE), iter(dataset), strict=False))
                items = [item for _, item in items]
        if not items:
            raise r.error("train_data", "the dataset is empty")
        bad = [item for item in items if not isinstance(item, (tuple, list)) or len(item) != 2]
        if bad:
            raise r.error("train_data", f"an item is {_shape(bad[0])}; items must be (input, target) pairs")
        try:
            x, y = loading.to_device(default_collate(items), self.device, self.dtype, False)
        except Exception as exc:  # default_collate refuses what it cannot stack
            raise r.error("train_data", f"items cannot be batched: {type(exc).__name__}: {exc}") from None
        training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self.autocast():
                try:
                    output = self.model(x)
                except NotImplementedError as exc:  # nn.Module without forward
                    raise r.error("model", f"{type(self.model).__name__} cannot be called: {exc}") from None
                except Exception as exc:
                    raise r.error("train_data", f"its inputs ({_shape(x)}) do not fit the model "
                                  f"({type(self.model).__name__}): {type(exc).__name__}: {exc}") from None
                if not isinstance(output, torch.Tensor):
                    raise r.error("model", f"{type(self.model).__name__} returned {_shape(output)}, not a tensor")
                self._check_loss(output, y)
        finally:
            self.model.train(training)
        return output, y

    def _check_loss(self, output: torch.Tensor, target: torch.Tensor) -> None:
        r, o = self.resolver, self.options
        if o.loss in measures.ELEMENTWISE and output.shape != target.shape:
            raise r.error("loss", f"{o.loss!r} compares outputs and targets element by element, but the model "
                          f"returns {_shape(output)} and the targets are {_shape(target)}")
        try:
            value = self.loss_fn(output, target)
        except Exception as exc:
            raise r.error("loss", f"{o.loss!r} failed on the model's output ({_shape(output)}) and the targets "
                          f"({_shape(target)}): {type(exc).__name__}: {exc}") from None
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise r.error("loss", f"{o.loss!r} returned {_shape(value)}, not a scalar (reduce it, e.g. with .mean())")

    def _check_metrics(self, output: torch.Tensor, target: torch.Tensor) -> None:
        for name, metric in self.metrics.items():
            try:
                metric.update(measures.fit_shapes(output, target), target)
                metric.compute()
            except Exception as exc:  # torchmetrics validates shapes, dtypes and class counts
                raise self.resolver.error("metrics", f"{name!r} does not fit the model's output ({_shape(output)}) "
                                          f"and the targets ({_shape(target)}): {exc}") from None
            finally:
                metric.reset()

    # -- the Task protocol ------------------------------------------------------------------------

    def batch(self, index: int) -> Any:
        """Global batch ``index`` (this process's part of it under torchrun)."""
        return self.batch_part(index, self.strategy.rank, self.strategy.size)

    def batch_part(self, index: int, rank: int, size: int) -> Any:
        self._setup()
        if (rank, size) != (self.train.rank, self.train.size):
            raise ValueError(f"this task reads the part of process {self.train.rank} of {self.train.size}")
        return self.train.get(index)

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return self.loss_fn(model(x), y)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """``eval_loss`` and every metric over the whole validation set (all processes' parts)."""
        self._setup()
        if self.val is None:
            return {}
        for metric in (self.mean_loss, *self.metrics.values()):
            metric.reset()
        for batch in self.val:
            x, y = loading.to_device(batch, self.device, self.dtype, self.options.loader.pin_memory)
            with self.autocast():
                output = model(x)
                loss = self.loss_fn(output, y)
            self.mean_loss.update(loss.detach().float(), weight=len(y))
            for metric in self.metrics.values():
                metric.update(measures.fit_shapes(output, y), y)
        results = {"eval_loss": self.mean_loss.compute().item()}
        results.update({name: metric.compute().item() for name, metric in self.metrics.items()})
        return results

    # -- checkpoints: the data order must not change on resume -------------------------------------

    @hookimpl(tryfirst=True)
    def train_start(self) -> None:
        self._setup()

    @hookimpl
    def checkpoint(self, state: MutableMapping[str, Any]) -> None:
        state[KEY] = {name: getattr(self.options.loader, name) for name in ORDER}

    @hookimpl
    def restore(self, state: Mapping[str, Any]) -> None:
        saved = state.get(KEY, {})
        if changed := [n for n in ORDER if n in saved and saved[n] != getattr(self.options.loader, n)]:
            raise CheckpointError(
                f"cannot resume: task.loader.{changed[0]} was {saved[changed[0]]!r} and is now "
                f"{getattr(self.options.loader, changed[0])!r}; it decides the order of the data, so it may not change")

    @hookimpl
    def train_end(self) -> None:
        if self._ready:
            self.train.close()
