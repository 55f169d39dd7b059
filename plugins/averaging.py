"""Weight averaging: the ``[averaging]`` kind, declared here, and its ``ema`` component.

``ema`` keeps an exponential moving average of the model's floating-point parameters and
buffers, ``avg <- decay * avg + (1 - decay) * weights`` after every ``every`` steps (from step
``start``; until then the average follows the weights). It is used for

- **evaluation** (``evaluate = true``): ``eval_start`` copies the average into the model and
  ``eval_end`` puts the trained weights back, bit for bit;
- **checkpoints and ``load_model``** (``export = true``): ``save_start`` writes the average as
  the checkpoint's ``"model"`` (what ``phasetrain.load_model`` returns) and keeps the trained
  weights under this plugin's key, which ``restore`` puts back, so a resumed run continues from
  the trained weights exactly.

Everything goes through documented hooks only; the loop knows nothing about averaging.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

import attrs
import torch

from phasetrain import Component, hookimpl
from phasetrain.config import FieldValueError, non_negative, positive
from phasetrain.registry import Kind

KEY = "ema"  # this plugin's key in checkpoint state


def _decay(_instance: Any, attribute: Any, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise FieldValueError(attribute.name, f"must be in [0, 1), got {value!r}")


@attrs.define
class EMAOptions:
    decay: float = attrs.field(default=0.999, validator=_decay)  # weight of the old average per update
    every: int = attrs.field(default=1, validator=positive)  # steps between updates
    start: int = attrs.field(default=0, validator=non_negative)  # before this step the average is the weights
    evaluate: bool = True  # evaluate the average instead of the trained weights
    export: bool = True  # checkpoints' "model" (and load_model) is the average


class EMA:
    """An exponential moving average of the weights (see the module docstring)."""

    def __init__(self, options: EMAOptions, ctx: Any):
        self.options = options
        model = ctx.component("task").model
        self.names = [n for n, t in model.state_dict().items() if t.is_floating_point()]
        self.average = [model.state_dict()[n].detach().clone() for n in self.names]
        self.updates = 0
        self._trained: list[torch.Tensor] | None = None  # the trained weights while the average is in

    def _live(self, trainer: Any) -> list[torch.Tensor]:
        state = trainer.model.state_dict()  # tensors that share storage with the model
        return [state[n] for n in self.names]

    @hookimpl
    def post_step(self, trainer: Any, step: int) -> None:
        o, done = self.options, step + 1
        if done % o.every:
            return
        with torch.no_grad():
            live = self._live(trainer)
            if done <= o.start:
                torch._foreach_copy_(self.average, live)
            else:
                torch._foreach_lerp_(self.average, live, 1.0 - o.decay)
                self.updates += 1

    # -- evaluation ------------------------------------------------------------------------------

    @hookimpl
    def eval_start(self, trainer: Any) -> None:
        if self.options.evaluate and self._trained is None:
            live = self._live(trainer)
            with torch.no_grad():
                self._trained = [t.clone() for t in live]
                torch._foreach_copy_(live, self.average)

    @hookimpl
    def eval_end(self, trainer: Any) -> None:
        if self._trained is not None:
            with torch.no_grad():
                torch._foreach_copy_(self._live(trainer), self._trained)
            self._trained = None

    # -- checkpoints -----------------------------------------------------------------------------

    @hookimpl
    def checkpoint(self, state: MutableMapping[str, Any]) -> None:
        state[KEY] = {"average": dict(zip(self.names, self.average, strict=True)), "updates": self.updates}

    @hookimpl
    def save_start(self, state: MutableMapping[str, Any]) -> None:
        if not self.options.export:
            return
        trained = dict(state["model"])
        if self._trained is not None:  # written while the average is in the model: the trained ones are aside
            trained.update(zip(self.names, self._trained, strict=True))
        state["plugins"][KEY]["trained"] = trained
        state["model"] = {**trained, **state["plugins"][KEY]["average"]}

    @hookimpl
    def restore(self, trainer: Any, state: Mapping[str, Any]) -> None:
        saved = state.get(KEY)
        if not saved:
            return
        with torch.no_grad():
            torch._foreach_copy_(self.average, [saved["average"][n] for n in self.names])
            if "trained" in saved:  # the kernel loaded the average into the model: back to the trained weights
                trainer.model.load_state_dict(saved["trained"])
        self.updates, self._trained = int(saved["updates"]), None


@hookimpl
def phasetrain_kinds() -> list[Kind]:
    return [Kind("averaging", "averaged weights used to evaluate, save and export the model",
                 contracts="phasetrain.plugins.generic_contracts")]


@hookimpl
def phasetrain_components() -> list[Component]:
    return [Component("averaging", "ema", EMA, EMAOptions, "exponential moving average of the weights")]
