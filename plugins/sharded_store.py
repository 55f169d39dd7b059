"""The ``sharded`` store: checkpoints of a sharded run, every process writing its own shard with
``torch.distributed.checkpoint`` (DCP), read back on any number of processes.

Layout::

    <run.out_dir>/checkpoints/step-00000100/state.pt       all but the sharded tensors (torch.save)
                                          /__0_0.distcp   process 0's shards (DCP), one file per process
                                          /.metadata      DCP's index of the shards
                                          /meta.json      step, world size, config, versions, SHA-256 of each file

**Writing** (every process calls :meth:`ShardedStore.save`): the state is split into its DTensors
(the shards of parameters, optimizer moments, averaged weights ...) and the rest, where each
DTensor is replaced by a small marker (its key, global shape, dtype and placements). All
processes write their shards into ``.tmp-step-XXXXXXXX`` through DCP (each file fsynced, the
index written last by the coordinator), then hash their own files; the hashes are gathered on the
main process, which writes ``state.pt`` (the rest: counters, generators, plain tensors, which are
the same on every process) and ``meta.json``, fsyncs the directory and renames it into place.
Until that rename nothing of the new checkpoint is visible, so a crash at any point leaves the
previous checkpoint the newest good one; the stale temporary is removed by the next save.

**Reading** never runs code from a file: every file's SHA-256 is checked against ``meta.json``
first (the files are spread over the processes, which agree on the verdict); ``state.pt`` loads
with ``torch.load(weights_only=True)``; DCP's index (a pickle) is first read by an unpickler that
admits only DCP's own metadata classes, and DCP then loads every tensor with
``weights_only=True``. A bad checkpoint is reported and the previous one used, as by ``local``.

**Resharding**: a DTensor is read onto the current run's mesh whatever the number of processes
that wrote it (DCP reads the overlapping parts of each file). Outside a run
(``phasetrain.load_checkpoint``, ``load_model``) or in a run whose strategy does not shard, it is
read as a full tensor. Random generators are per process: a run resumed on the same number of
processes gets them back exactly; on another number each process keeps the generators it was
seeded with (``seed + rank``), which is reported. The data position is global, so the batches
that follow are the same whatever the number of processes.

Under ``ddp`` or a single process nothing is sharded and the checkpoint is ``state.pt`` alone,
written by the main process: a replicated run can use this store too and then also resumes on
another number of processes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from phasetrain import Component, NoOptions, hookimpl
from phasetrain.errors import CheckpointError, TrainingFailed
from phasetrain.plugins.distributed import ShardsState, is_dtensor
from phasetrain.plugins.store import (META_FILE, STATE_FILE, _fsync_dir, _write, accepted, checkpoint_dir, list_checkpoints,
                                      name_for, versions)
from phasetrain.state import rng_state

FORMAT = "phasetrain-sharded/1"
INDEX_FILE = ".metadata"  # DCP's name for its index
MARK = "__dtensor__"  # the key of a marker that stands for a DTensor in state.pt


# ---------------------------------------------------------------------------------------------
# A state split into its shards and the rest
# ---------------------------------------------------------------------------------------------


def split(state: Any, path: str = "", shards: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """``state`` with every DTensor replaced by a marker, and the DTensors by key (``/``-joined
    path). Containers keep their keys and types."""
    shards = {} if shards is None else shards
    if is_dtensor(state):
        if path in shards:
            raise TrainingFailed(f"two sharded tensors of the state have the key {path!r}")
        shards[path] = state
        placements = [f"S{p.dim}" if p.is_shard() else "R" for p in state.placements]
        return {MARK: path, "shape": list(state.shape), "dtype": state.dtype, "placements": placements}, shards
    if isinstance(state, Mapping):
        return {k: split(v, f"{path}/{k}", shards)[0] for k, v in state.items()}, shards
    if isinstance(state, (list, tuple)):
        return type(state)(split(v, f"{path}/{i}", shards)[0] for i, v in enumerate(state)), shards
    return state, shards


def markers(skeleton: Any) -> list[dict[str, Any]]:
    """The markers of a split state, in order."""
    if isinstance(skeleton, Mapping):
        return [skeleton] if MARK in skeleton else [m for v in skeleton.values() for m in markers(v)]
    if isinstance(skeleton, (list, tuple)):
        return [m for v in skeleton for m in markers(v)]
    return []


def join(skeleton: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The inverse of :func:`split`: markers replaced by the tensors of their keys."""
    if isinstance(skeleton, Mapping):
        return tensors[skeleton[MARK]] if MARK in skeleton else {k: join(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, (list, tuple)):
        return type(skeleton)(join(v, tensors) for v in skeleton)
    return skeleton


def template(marker: Mapping[str, Any], mesh: Any, device: torch.device) -> torch.Tensor:
    """An empty tensor for ``marker`` to be read into: a DTensor on ``mesh`` with the saved
    placements, or (``mesh`` None) a full tensor on ``device``."""
    shape, dtype = [int(n) for n in marker["shape"]], marker["dtype"]
    if mesh is None:
        return torch.empty(shape, dtype=dtype, device=device)
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor import empty as dtensor_empty

    placements = [Replicate() if p == "R" else Shard(int(p[1:])) for p in marker["placements"]]
    return dtensor_empty(shape, dtype=dtype, device_mesh=mesh, placements=placements)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


#: What DCP's index may refer to: its own metadata classes, torch sizes, dtypes and layouts, paths.
INDEX_CLASSES = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "TensorStorageMetadata", "ChunkStorageMetadata",
                                              "TensorProperties", "MetadataIndex", "StorageMeta",
                                              "BytesStorageMetadata", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


class IndexUnpickler(pickle.Unpickler):
    """Unpickles DCP's index and nothing else: any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if name in INDEX_CLASSES.get(module, ()) or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint index")


def check_index(path: Path) -> None:
    """Refuse an index that refers to anything but DCP's metadata classes (before DCP reads it)."""
    try:
        with open(path, "rb") as f:
            IndexUnpickler(f).load()
    except Exception as exc:
        raise CheckpointError(f"{path}: refused to load ({exc})") from None


def read_meta(path: Path) -> dict[str, Any]:
    meta_path = path / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{meta_path}: missing") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{meta_path}: unreadable ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("sha256"), dict):
        raise CheckpointError(f"{meta_path}: not a sharded phasetrain checkpoint (format {FORMAT})")
    return meta


def verify(path: Path, files: list[str]) -> list[str]:
    """Problems with ``files`` of the checkpoint at ``path`` against ``meta.json``'s checksums."""
    sums, problems = read_meta(path)["sha256"], []
    for name in files:
        try:
            if sha256(path / name) != sums[name]:
                problems.append(f"{path / name}: checksum mismatch (truncated or modified)")
        except FileNotFoundError:
            problems.append(f"{path / name}: missing")
        except OSError as exc:
            problems.append(f"{path / name}: unreadable ({exc})")
    return problems


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------


class ShardedStore:
    """Checkpoints under ``<run.out_dir>/checkpoints``, each process writing its shard (see the
    module docstring). Built with ``ctx=None`` it reads outside a run, as full tensors."""

    writes_shards = True

    def __init__(self, options: Any = None, ctx: Any = None):
        self.trainer = ctx.trainer if ctx is not None else None

    # -- writing ---------------------------------------------------------------------------------

    def save(self, trainer: Any, state: Mapping[str, Any]) -> Path:
        """Write ``state`` as the checkpoint of the current step; every process calls it."""
        import torch.distributed.checkpoint as dcp

        strategy = trainer.strategy
        skeleton, shards = split(dict(state))
        local = [(n, t.to_local() if is_dtensor(t) else t) for n, t in state["model"].items()]
        bad = [n for n, t in local if t.is_floating_point() and not torch.isfinite(t).all()]
        if strategy.any(bool(bad)):  # each process saw its own shards: all refuse together
            raise TrainingFailed(f"refusing to write a checkpoint with non-finite weights ({', '.join(bad[:3]) or 'on another process'})")
        root = checkpoint_dir(trainer.out_dir)
        final = root / name_for(trainer.state.step)
        tmp = root / f".tmp-{final.name}"
        if strategy.main:
            if tmp.exists():  # left by a crash while this step was being written
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        strategy.barrier()
        if shards:  # the same keys on every process: all write, or none
            dcp.save(shards, storage_writer=dcp.FileSystemWriter(tmp, single_file_per_rank=True, sync_files=True))
        own = {f.name: sha256(f) for f in sorted(tmp.glob(f"__{strategy.rank}_*.distcp"))}
        gathered = strategy.gather(own)
        if strategy.main:
            self._publish(trainer, tmp, final, skeleton, gathered)
        strategy.barrier()
        return final

    def _publish(self, trainer: Any, tmp: Path, final: Path, skeleton: Any, gathered: list[dict[str, str]]) -> None:
        """The main process: the rest of the state, the checksums, and the rename into place."""
        buffer = io.BytesIO()
        torch.save(skeleton, buffer)
        sums = {name: digest for own in gathered for name, digest in own.items()}
        if (tmp / INDEX_FILE).exists():
            sums[INDEX_FILE] = sha256(tmp / INDEX_FILE)
        data = buffer.getvalue()
        _write(tmp / STATE_FILE, data)
        sums[STATE_FILE] = hashlib.sha256(data).hexdigest()
        meta = {"format": FORMAT, "step": trainer.state.step, "world_size": trainer.strategy.size, "sha256": sums,
                "config": trainer.config.to_dict(), "config_hash": trainer.config.hash(), "versions": versions(trainer)}
        _write(tmp / META_FILE, json.dumps(meta, indent=2, sort_keys=True).encode())
        _fsync_dir(tmp)
        root = final.parent
        if final.exists():  # the same step written again (after a resume): swap atomically
            old = root / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for old in list_checkpoints(root)[: -trainer.config.run.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    # -- reading ---------------------------------------------------------------------------------

    def latest(self, path: str | Path, report: Any = None, accept: Any = None
               ) -> tuple[Path, dict[str, Any], dict[str, Any]]:
        """The checkpoint at ``path`` if it is one, else the newest good one of the run at ``path``
        that ``accept`` (the run applying it) takes."""
        path = Path(path)
        if (path / META_FILE).exists():
            return (path, *accepted(path, *self.load(path, report), accept))
        root = checkpoint_dir(path)
        found = list_checkpoints(root)
        if not found:
            raise CheckpointError(f"no checkpoint to resume from in {root}")
        problems = []
        for checkpoint in reversed(found):
            try:
                return (checkpoint, *accepted(checkpoint, *self.load(checkpoint, report), accept))
            except CheckpointError as exc:
                problems.append(str(exc))
                if report is not None:
                    report(f"skipping bad checkpoint: {exc}")
        raise CheckpointError(f"no good checkpoint in {root}: " + "; ".join(problems))

    def load(self, path: Path, report: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Verify and load one checkpoint directory -> (state, meta); in a run, every process
        takes part and they reach the same verdict."""
        import torch.distributed.checkpoint as dcp

        trainer = self.trainer
        strategy = trainer.strategy if trainer is not None else None
        rank, size = (strategy.rank, strategy.size) if strategy is not None else (0, 1)
        meta = read_meta(path)
        names = sorted(meta["sha256"])
        problems = verify(path, names[rank::size])  # each process checks its share of the files
        if strategy is not None:
            problems = [p for part in strategy.gather(problems) for p in part]
        if problems:
            raise CheckpointError(problems[0])
        try:
            skeleton = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises UnpicklingError and friends for unsafe content
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{path / STATE_FILE}: refused to load ({first})") from None
        if not isinstance(skeleton, dict) or "model" not in skeleton:
            raise CheckpointError(f"{path / STATE_FILE}: does not hold a phasetrain state")
        wanted = markers(skeleton)
        if wanted:
            check_index(path / INDEX_FILE)
            sharded = strategy is not None and isinstance(strategy, ShardsState)
            mesh, device = (strategy.mesh if sharded else None), (trainer.device if trainer is not None else torch.device("cpu"))
            tensors = {m[MARK]: template(m, mesh, device) for m in wanted}
            try:
                with warnings.catch_warnings():  # reading alone is what no_dist asks for; no need to warn
                    warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
                    dcp.load(tensors, storage_reader=dcp.FileSystemReader(path),
                             no_dist=trainer is None or not dist.is_initialized())
            except Exception as exc:
                raise CheckpointError(f"{path}: the shards do not load ({type(exc).__name__}: {exc})") from None
            skeleton = join(skeleton, tensors)
        saved = skeleton.get("rng", {}).get("per_rank") if isinstance(skeleton.get("rng"), dict) else None
        if strategy is not None and isinstance(saved, list) and len(saved) != size:
            if report is not None:
                report(f"{path} was written by {len(saved)} process(es) and this run has {size}: "
                       "each process continues with the generators it was seeded with")
            skeleton["rng"]["per_rank"] = strategy.gather(rng_state())
        return skeleton, meta


@hookimpl
def phasetrain_components() -> list[Component]:
    return [Component("store", "sharded", ShardedStore, NoOptions,
                      "each process writes its shard (torch.distributed.checkpoint); resumes on any number of processes")]
