"""The ``local`` store: checkpoints as files in the run directory, written atomically, loaded
safely, pruned, and found again on resume. The ``[store]`` kind is the kernel's; this is its
default component.

Layout::

    <run.out_dir>/checkpoints/step-00000100/state.pt   tensors in plain containers (torch.save)
                                          /meta.json  step, config, hashes, versions, checksum

A checkpoint is written under a temporary name, every file flushed and fsynced, then renamed into
place, so a crash leaves either the old or the new checkpoint complete. ``state.pt`` is loaded
with ``torch.load(weights_only=True)`` after its SHA-256 matches ``meta.json``: loading never
unpickles arbitrary objects.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch

from phasetrain import Component, NoOptions, hookimpl
from phasetrain.errors import CheckpointError, TrainingFailed

if TYPE_CHECKING:
    from phasetrain.loop import Trainer

FORMAT = 2  # 2 (phasetrain 0.2): a stage's own optimizer is saved as "phase.<name>"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
PREFIX = "step-"


def checkpoint_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoints"


def name_for(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def versions(trainer: Trainer) -> dict[str, str]:
    out = {"python": sys.version.split()[0], "torch": torch.__version__}
    try:
        out["phasetrain"] = importlib.metadata.version("phasetrain")
    except importlib.metadata.PackageNotFoundError:
        out["phasetrain"] = "unknown"
    for info in trainer.registry.plugins:
        out.setdefault(info.distribution, info.version)
    return out


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest()


def save(trainer: Trainer, state: Mapping[str, Any]) -> Path:
    """Write ``state`` (the run's ``state_dict()``) as the checkpoint of the current step,
    atomically, and prune old ones; return its directory.

    Every process calls it; the main one writes, and all wait until the checkpoint is in place.
    """
    import io

    bad = [n for n, t in state["model"].items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise TrainingFailed(f"refusing to write a checkpoint with non-finite weights ({', '.join(bad[:3])})")
    root = checkpoint_dir(trainer.out_dir)
    final = root / name_for(trainer.state.step)
    strategy = trainer.strategy
    if not strategy.main:
        strategy.barrier()
        return final
    root.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    digest = _write(tmp / STATE_FILE, buffer.getvalue())
    meta = {
        "format": FORMAT,
        "step": trainer.state.step,
        "sha256": {STATE_FILE: digest},
        "config": trainer.config.to_dict(),
        "config_hash": trainer.config.hash(),
        "versions": versions(trainer),
    }
    _write(tmp / META_FILE, json.dumps(meta, indent=2, sort_keys=True).encode())
    _fsync_dir(tmp)
    if final.exists():  # the same step written again (after a resume): swap atomically
        old = root / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    prune(root, trainer.config.run.keep_checkpoints)
    strategy.barrier()
    return final


def prune(root: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints; remove older ones and stale temporaries."""
    for stale in root.glob(".tmp-*"):
        if not stale.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories under ``root``, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def read_meta(path: Path) -> dict[str, Any]:
    meta_path = path / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{meta_path}: missing") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{meta_path}: unreadable ({exc})") from None
    if isinstance(meta, dict) and meta.get("format") == 1:
        raise CheckpointError(f"{meta_path}: written by phasetrain 0.1 (checkpoint format 1); this phasetrain "
                              f"reads format {FORMAT}: finish that run with phasetrain 0.1 or start it again")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "sha256" not in meta:
        raise CheckpointError(f"{meta_path}: not a phasetrain checkpoint of format {FORMAT}")
    return meta


def load_dir(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify and load one checkpoint directory → (state, meta). Never runs pickled code."""
    path = Path(path)
    meta = read_meta(path)
    state_path = path / STATE_FILE
    try:
        data = state_path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{state_path}: missing") from None
    except OSError as exc:
        raise CheckpointError(f"{state_path}: unreadable ({exc})") from None
    if hashlib.sha256(data).hexdigest() != meta["sha256"].get(STATE_FILE):
        raise CheckpointError(f"{state_path}: checksum mismatch (truncated or modified)")
    import io

    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError and friends for unsafe content
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{state_path}: refused to load ({first})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{state_path}: does not hold a phasetrain state")
    return state, meta


def latest_good(out_dir: Path, report: Any = None) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """The newest checkpoint of a run that loads; bad ones are reported through ``report``."""
    root = checkpoint_dir(out_dir)
    found = list_checkpoints(root)
    if not found:
        raise CheckpointError(f"no checkpoint to resume from in {root}")
    problems = []
    for path in reversed(found):
        try:
            state, meta = load_dir(path)
        except CheckpointError as exc:
            problems.append(str(exc))
            if report is not None:
                report(f"skipping bad checkpoint: {exc}")
            continue
        return path, state, meta
    raise CheckpointError(f"no good checkpoint in {root}: " + "; ".join(problems))


class LocalStore:
    """Checkpoints under ``<run.out_dir>/checkpoints`` (see the module docstring)."""

    def __init__(self, options: Any = None, ctx: Any = None):
        pass

    def save(self, trainer: Trainer, state: Mapping[str, Any]) -> Path:
        return save(trainer, state)

    def latest(self, path: str | Path, report: Any = None) -> tuple[Path, dict[str, Any], dict[str, Any]]:
        """The checkpoint at ``path`` if it is one, else the newest good one of the run at ``path``."""
        path = Path(path)
        if (path / META_FILE).exists():
            return (path, *load_dir(path))
        return latest_good(path, report)


@hookimpl
def phasetrain_components() -> list[Component]:
    return [Component("store", "local", LocalStore, NoOptions,
                      "checkpoint directories in the run directory: atomic, checksummed, weights_only", default=True)]
