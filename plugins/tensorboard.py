"""The ``tensorboard`` observer: scalars, phases, task images and hyperparameters for TensorBoard.

Writes with ``torch.utils.tensorboard.SummaryWriter`` into ``<run.out_dir>/tensorboard``
(``tensorboard --logdir runs`` then compares runs). Tags:

- ``train/loss``, ``train/lr``, ``train/step_time`` (seconds per step since the previous record),
  ``train/phase`` (the phase's index, in order of first appearance) and ``train/<field>`` for
  every other scalar number in the step's metrics, every ``every`` steps and at the last step;
- ``eval/<field>`` for every evaluation metric;
- text ``phase`` at each change of phase;
- ``images/<name>`` from a task that has ``images(model) -> {name: picture}``, every
  ``image_every`` evaluations and at the last one: a matplotlib figure (the PINN task's fields,
  with axes and colour bars) goes through ``add_figure``, a uint8 array (H, W, 3) through
  ``add_image``;
- the flattened config as hyperparameters with the final metrics (``hparams/<field>``) at the end.

A resumed run writes a new event file that hides whatever the interrupted run wrote after the
checkpoint (``purge_step``), so the curves stay continuous. Only rank 0 writes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs

from phasetrain import Component, hookimpl
from phasetrain.config import non_negative
from phasetrain.errors import TrainingFailed
from phasetrain.plugins.observing import flatten_config, inside_run_dir, is_writer, numeric_fields, phase_number

STATE_KEY = "tensorboard"


@attrs.define
class TensorBoardOptions:
    """Cadences of the TensorBoard observer and what it writes."""

    every: int = attrs.field(default=0, validator=non_negative)  # scalars every N steps; 0: run.log_every
    image_every: int = attrs.field(default=1, validator=non_negative)  # task images every N evaluations; 0: never
    hparams: bool = True  # the config and final metrics for TensorBoard's HParams tab
    log_dir: str = attrs.field(default="tensorboard", validator=inside_run_dir)  # relative to run.out_dir


@runtime_checkable
class RendersImages(Protocol):
    """A task that renders what it computed as pictures: name -> matplotlib ``Figure`` or
    (H, W, 3) uint8 array."""

    def images(self, model: Any) -> Mapping[str, Any]: ...


def check_images(images: Any, task: str) -> dict[str, Any]:
    """``images`` must map names to matplotlib figures or uint8 arrays of shape (H, W, 3); a
    clear error otherwise."""
    import numpy as np
    from matplotlib.figure import Figure

    if not isinstance(images, Mapping):
        raise TrainingFailed(f"task {task!r}: images() must return a dict of name -> picture, got {type(images).__name__}")
    for name, array in images.items():
        ok = isinstance(array, Figure) or (
            isinstance(array, np.ndarray) and array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3)
        if not ok:
            what = f"{array.dtype} array of shape {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
            raise TrainingFailed(f"task {task!r}: images()[{name!r}] must be a matplotlib Figure or a uint8 array "
                                 f"(H, W, 3), got {what}")
    return dict(images)


class TensorBoard:
    """Writes the event files; see the module docstring for the tags."""

    def __init__(self, options: TensorBoardOptions, ctx: Any):
        self.options = options
        self.every = options.every or ctx.config.run.log_every
        self.total = ctx.config.run.steps
        self.log_dir = Path(ctx.out_dir) / options.log_dir
        self.writer: Any = None
        self.phases: list[str] = []  # phase names in order of first appearance: their index
        self.evaluations = 0
        self._mark = (0.0, 0)  # (perf_counter, step) of the previous train record

    # -- state across resumes -------------------------------------------------------------------

    @hookimpl
    def checkpoint(self, state: Any) -> None:
        state[STATE_KEY] = {"phases": list(self.phases), "evaluations": self.evaluations}

    @hookimpl
    def restore(self, trainer: Any, state: Any) -> None:
        saved = state.get(STATE_KEY)
        if isinstance(saved, Mapping):
            known = [str(p) for p in saved.get("phases", [])]
            self.phases = known + [p for p in self.phases if p not in known]  # indices stay put
            self.evaluations = int(saved.get("evaluations", 0))
        if self.writer is not None:  # rolled back during the run: hide the steps that are undone
            self.writer.close()
            self._open(trainer.state.step)

    # -- the run --------------------------------------------------------------------------------

    @hookimpl
    def train_start(self, trainer: Any) -> None:
        if not is_writer():
            return
        step = trainer.state.step
        self._open(step)
        if not step:
            toml = _config_toml(trainer.config)
            if toml:
                self.writer.add_text("config", "```toml\n" + toml + "\n```", 0)

    def _open(self, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # Events at or after purge_step that earlier event files hold are hidden: after a resume
        # or a rollback those written past the checkpoint; for a fresh run, all old ones.
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=step + 1 if step else 0)
        self._mark = (time.perf_counter(), step)

    @hookimpl
    def phase_enter(self, trainer: Any, phase: Any, previous: Any) -> None:
        if self.writer is None:
            return
        number = phase_number(self.phases, phase, previous)
        if number is None:
            return
        step = trainer.state.step
        before = f"{previous.name} -> " if previous is not None else ""
        self.writer.add_text("phase", f"step {step}: {before}{phase.name}", step)
        self.writer.add_scalar("train/phase", number, step)

    @hookimpl
    def event(self, step: int, name: str, message: str) -> None:
        if self.writer is not None:
            self.writer.add_text(f"events/{name}", message, step)

    @hookimpl(trylast=True)
    def post_step(self, trainer: Any, step: int, metrics: Any) -> None:
        done = step + 1
        if self.writer is None or (done % self.every and done != self.total):
            return
        now = time.perf_counter()
        then, before = self._mark
        self._mark = (now, done)
        write = self.writer.add_scalar
        for key, value in numeric_fields(metrics, ("step", "phase")).items():
            write(f"train/{key}", value, done)
        if done > before:
            write("train/step_time", (now - then) / (done - before), done)
        name = trainer.state.phase
        if name in self.phases:
            write("train/phase", self.phases.index(name), done)

    @hookimpl(trylast=True)
    def eval_end(self, trainer: Any, step: int, metrics: Any) -> None:
        if self.writer is None:
            return
        for key, value in numeric_fields(metrics, ("step",)).items():
            self.writer.add_scalar(f"eval/{key}", value, step)
        self.evaluations += 1
        every = self.options.image_every
        last = step >= self.total or trainer.stop_requested
        if every and (self.evaluations % every == 0 or last):
            self._images(trainer, step)

    def _images(self, trainer: Any, step: int) -> None:
        import numpy as np

        if not isinstance(trainer.task, RendersImages):
            return
        images = trainer.task.images
        model = trainer.model
        was_training = model.training
        model.eval()
        try:
            found = check_images(images(model), trainer.config.task.use)
        finally:
            model.train(was_training)
        for name, picture in found.items():
            if isinstance(picture, np.ndarray):
                self.writer.add_image(f"images/{name}", picture, step, dataformats="HWC")
            else:  # a matplotlib figure of our own (not pyplot's): nothing to close
                self.writer.add_figure(f"images/{name}", picture, step, close=False)

    @hookimpl
    def train_end(self, trainer: Any, outcome: Any) -> None:
        if self.writer is None:
            return
        try:
            if self.options.hparams:
                self._hparams(trainer, outcome)
        finally:
            self.writer.close()
            self.writer = None

    def _hparams(self, trainer: Any, outcome: Any) -> None:
        from torch.utils.tensorboard.summary import hparams

        final = {f"hparams/{k}": v for k, v in numeric_fields(outcome.metrics, ("step", "phase")).items()}
        final.update({f"hparams/{k}": v for k, v in numeric_fields(outcome.eval, ("step",)).items()})
        # Written into this run's own directory (SummaryWriter.add_hparams would start another
        # run beside it), with the final metrics under tags of their own.
        experiment, start, end = hparams(flatten_config(trainer.config.to_dict()), final)
        for summary in (experiment, start, end):
            self.writer.file_writer.add_summary(summary, outcome.steps)
        for tag, value in final.items():
            self.writer.add_scalar(tag, value, outcome.steps)


def _config_toml(config: Any) -> str:
    try:
        from phasetrain.config import to_toml

        return to_toml(config)
    except (TypeError, ValueError):  # a config TOML cannot express: skip the text
        return ""


@hookimpl
def phasetrain_components() -> list[Component]:
    return [
        Component("observer", "tensorboard", TensorBoard, TensorBoardOptions,
                  "TensorBoard scalars, phases, task images and hyperparameters"),
    ]
