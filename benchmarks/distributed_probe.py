"""A phasetrain plugin that ``benchmarks/distributed.py`` installs into the runs it launches (by
``PYTHONPATH`` and an entry point), so that what it measures is measured inside every process
of a real ``torchrun ... -m phasetrain run``. It does nothing unless ``PROBE_OUT`` names a
directory; there it writes ``probe-<attempt>-<rank>.json`` at the end of the run:

- ``bytes``: the parameters, gradients and optimizer state this process holds after its first
  step (a DTensor counts its local shard only);
- ``step_s``: the duration of every step (``pre_step`` to ``post_step``);
- ``save_s``: the last checkpoint, from ``save_start`` to ``save_end`` (the store writing it);
- ``load_s``: reading the newest checkpoint back through the run's store, at the end;
- elastic restarts: ``from_step`` (where this attempt started) and ``first_step_end`` (wall
  clock); with ``PROBE_KILL_AT=K``, rank 1 of the first attempt records the time and SIGKILLs
  itself right after step K, between two checkpoints.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch

from phasetrain import hookimpl
from phasetrain.plugins.distributed import is_dtensor

OUT = os.environ.get("PROBE_OUT")
ATTEMPT, RANK = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"), os.environ.get("RANK", "0")


def local_bytes(tensors: Any) -> int:
    """Bytes of the tensors among ``tensors`` that this process holds (a DTensor: its shard)."""
    held = [t.to_local() if is_dtensor(t) else t for t in tensors if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in held)


RECORD: dict[str, Any] = {"rank": int(RANK), "attempt": int(ATTEMPT), "step_s": []}
CLOCK = {"step": 0.0, "save": 0.0}


def _write() -> None:
    Path(OUT).mkdir(parents=True, exist_ok=True)
    (Path(OUT) / f"probe-{ATTEMPT}-{RANK}.json").write_text(json.dumps(RECORD))


@hookimpl
def train_start(trainer: Any) -> None:
    RECORD["from_step"] = trainer.state.step


@hookimpl(tryfirst=True)
def pre_step() -> None:
    CLOCK["step"] = time.perf_counter()


@hookimpl(trylast=True)
def post_step(trainer: Any, step: int) -> None:
    if not OUT:
        return
    RECORD["step_s"].append(time.perf_counter() - CLOCK["step"])
    if "bytes" not in RECORD:
        state = [t for o in trainer.optimizers.values() for s in o.state.values() for t in s.values()]
        RECORD["bytes"] = {"params": local_bytes(trainer.trainable),
                           "grads": local_bytes(p.grad for p in trainer.trainable),
                           "optimizer": local_bytes(state)}
        RECORD["first_step_end"] = time.time()
    kill = int(os.environ.get("PROBE_KILL_AT", "0"))
    if kill and step + 1 == kill and ATTEMPT == "0" and RANK == "1":
        RECORD["killed_at"], RECORD["killed_after_step"] = time.time(), step + 1
        _write()
        os.kill(os.getpid(), signal.SIGKILL)


@hookimpl
def save_start() -> None:
    CLOCK["save"] = time.perf_counter()


@hookimpl
def save_end() -> None:
    RECORD["save_s"] = time.perf_counter() - CLOCK["save"]


@hookimpl
def train_end(trainer: Any) -> None:
    if not OUT:
        return
    start = time.perf_counter()
    trainer.store.latest(trainer.out_dir)
    RECORD["load_s"] = time.perf_counter() - start
    _write()
