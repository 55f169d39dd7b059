"""Best checkpoints: the ``[best_checkpoints]`` kind, declared here, and its ``top_k`` component.

After every evaluation (``eval_end``) whose monitored metric would enter the ``keep`` best so far,
it asks for a checkpoint of that step (``trainer.request_checkpoint()``). When the run's
``[store]`` has written it (``save_end``), the checkpoint is kept under
``<run.out_dir>/checkpoints/best/step-XXXXXXXX/`` (hard links to the store's files, or a copy
where links are not possible), and ``best/index.json`` lists the kept ones, best first. The
store's rolling ``keep_checkpoints`` pruning removes only its own ``step-*`` directories, never
these. A checkpoint that falls out of the best ``keep`` is removed from ``best/``.

The list of kept checkpoints is part of the checkpoint state (including the one being written),
so a resumed run goes on choosing as the uninterrupted one would. ``phasetrain.load_model(run_dir,
which="best")`` reads the first entry of the index (through ``phasetrain_named_checkpoint``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import attrs

from phasetrain import Component, hookimpl
from phasetrain.config import one_of, positive
from phasetrain.errors import CheckpointError
from phasetrain.plugins.early_stopping import better, monitored, needs_evaluations
from phasetrain.registry import Kind

KEY = "best_checkpoints"  # this plugin's key in checkpoint state
INDEX = "index.json"


def best_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints" / "best"


def name_of(step: int) -> str:
    return f"step-{step:08d}"


@attrs.define
class TopKOptions:
    monitor: str = "eval_loss"  # the evaluation metric that ranks checkpoints
    mode: str = attrs.field(default="min", validator=one_of("min", "max"))  # min: lower is better
    keep: int = attrs.field(default=1, validator=positive)  # how many of the best to keep


def ranked(entries: list[tuple[float, int]], mode: str, keep: int) -> list[tuple[float, int]]:
    """``(value, step)`` pairs best first (an earlier step first among equals), at most ``keep``."""
    return sorted(entries, key=lambda e: (e[0] if mode == "min" else -e[0], e[1]))[:keep]


def _link(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed: a copy
        shutil.copy2(source, target)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


class TopK:
    """Keep the ``keep`` best checkpoints by ``monitor`` (see the module docstring)."""

    def __init__(self, options: TopKOptions, ctx: Any):
        needs_evaluations(ctx, KEY)
        self.options, self.source = options, ctx.config.source
        self.kept: list[tuple[float, int]] = []
        self.pending: tuple[float, int] | None = None

    def _qualifies(self, value: float) -> bool:
        if math.isnan(value) or math.isinf(value):
            return False
        o = self.options
        return len(self.kept) < o.keep or better(value, self.kept[-1][0], o.mode)

    def _with_pending(self, step: int) -> list[tuple[float, int]]:
        """The kept list once the checkpoint of ``step`` being written is kept too."""
        if self.pending is None or self.pending[1] != step:
            return self.kept
        return ranked([e for e in self.kept if e[1] != step] + [self.pending], self.options.mode, self.options.keep)

    @hookimpl
    def eval_end(self, trainer: Any, step: int, metrics: Mapping[str, Any]) -> None:
        value = monitored(metrics, self.options.monitor, f"{KEY}.monitor", self.source)
        if self._qualifies(value):
            self.pending = (value, step)
            trainer.request_checkpoint()

    @hookimpl
    def checkpoint(self, trainer: Any, state: MutableMapping[str, Any]) -> None:
        state[KEY] = {"kept": [[v, s] for v, s in self._with_pending(trainer.step)]}

    @hookimpl
    def save_end(self, trainer: Any, step: int, path: Path) -> None:
        if self.pending is None or self.pending[1] != step:
            return
        kept = self._with_pending(step)
        self.pending = None
        dropped = {s for _, s in self.kept} - {s for _, s in kept}
        self.kept = kept
        if trainer.strategy.main and any(s == step for _, s in kept):
            self._store(Path(path), step, dropped, best_dir(trainer.out_dir))

    def _store(self, path: Path, step: int, dropped: set[int], root: Path) -> None:
        """Link the checkpoint at ``path`` into ``root``, rewrite the index, drop the ones that fell out."""
        root.mkdir(parents=True, exist_ok=True)
        target, tmp = root / name_of(step), root / f".tmp-{name_of(step)}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(path, tmp, copy_function=_link)
        if target.exists():  # the same step kept again (a resumed run re-reached it): swap
            old = root / f".old-{name_of(step)}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        o = self.options
        _write_json(root / INDEX, {"monitor": o.monitor, "mode": o.mode, "checkpoints": [
            {"step": s, "value": v, "path": name_of(s)} for v, s in self.kept]})
        for s in dropped:
            shutil.rmtree(root / name_of(s), ignore_errors=True)

    @hookimpl
    def restore(self, state: Mapping[str, Any]) -> None:
        if (saved := state.get(KEY)) is not None:
            self.kept = [(float(v), int(s)) for v, s in saved["kept"]]
        self.pending = None


@hookimpl
def phasetrain_named_checkpoint(run_dir: Path, which: str) -> Path | None:
    """``"best"``: the first checkpoint of ``checkpoints/best/index.json``."""
    index = best_dir(run_dir) / INDEX
    if which != "best" or not index.exists():
        return None
    try:
        entries = json.loads(index.read_text())["checkpoints"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index}: unreadable ({type(exc).__name__}: {exc})") from None
    return best_dir(run_dir) / entries[0]["path"] if entries else None


@hookimpl
def phasetrain_kinds() -> list[Kind]:
    return [Kind(KEY, "keep the best checkpoints by an evaluation metric, apart from the rolling ones",
                 contracts="phasetrain.plugins.selection_contracts")]


@hookimpl
def phasetrain_components() -> list[Component]:
    return [Component(KEY, "top_k", TopK, TopKOptions, "keep the `keep` best checkpoints by `monitor`")]
