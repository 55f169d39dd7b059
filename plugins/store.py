"""The ``local`` store: checkpoints as files in the run directory, written atomically, loaded
safely, pruned, and found again on resume. The ``[store]`` kind is the kernel's; this is its
default component. docs/checkpoints.md describes the guarantees; this module keeps them.

Layout::

    <run.out_dir>/checkpoints/step-00000100/state.pt   tensors in plain containers (torch.save)
                                          /meta.json  step, config, versions, checksums

Writing: the state is serialised in memory, written into ``.tmp-step-…-<pid>``, every file and
the directory fsynced, then renamed into place. Re-writing a step that already has a checkpoint
moves the old one aside to ``.old-step-…-<pid>`` first; until the new one is in place, readers
take the ``.old`` one as that step's checkpoint, and the next start puts it back. Old checkpoints
are renamed to ``.del-…`` before they are deleted. So a crash between any two file-system
operations leaves the newest complete checkpoint readable (``tests/crash_injector.py`` proves it
by crashing after each of them). A write that fails (disk full, read-only) removes its temporary
directory and says which checkpoint is kept.

Reading: ``meta.json`` carries its own SHA-256 and that of ``state.pt``; both must match.
``state.pt`` is loaded with ``torch.load(weights_only=True)``: loading never unpickles arbitrary
objects. Only regular files are read (a FIFO or a device is refused without blocking), and
nothing a symbolic link leads to outside the checkpoints directory. A checkpoint whose weights
are not finite or whose counters are of the wrong types is refused like a damaged one: resume
reports it and takes the previous one. One in a newer checkpoint format stops the resume (taking
an older one would overwrite the newer later); one written by a newer phasetrain, torch or plugin
loads with a warning naming both versions.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import json
import os
import re
import shutil
import stat
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import torch

from phasetrain import Component, NoOptions, hookimpl
from phasetrain.errors import BadInput, CheckpointError, PhasetrainError, TrainingFailed

if TYPE_CHECKING:
    from phasetrain.loop import Trainer

FORMAT = 2  # 2 (phasetrain 0.2): a stage's own optimizer is saved as "phase.<name>"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
PREFIX = "step-"
TMP, OLD, DEL = ".tmp-", ".old-", ".del-"  # being written, moved aside for a re-write, being deleted
META_LIMIT = 64 * 2**20  # a meta.json larger than this is not one of ours
_NAME = re.compile(r"step-(\d{8,})")
_ASIDE = re.compile(r"\.old-(step-\d{8,})-\d+")


class NewerCheckpoint(UserWarning):
    """A checkpoint was written by a newer phasetrain, torch or plugin than the one reading it."""


def checkpoint_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoints"


def name_for(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def versions(trainer: Trainer) -> dict[str, str]:
    out = {"python": sys.version.split()[0], "torch": torch.__version__, "phasetrain": _installed("phasetrain")}
    for info in trainer.registry.plugins:
        out.setdefault(info.distribution, info.version)
    return out


def _installed(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return "unknown"


def meta_checksum(meta: Mapping[str, Any]) -> str:
    """The SHA-256 ``meta.json`` carries of itself: over its canonical JSON without that field."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save(trainer: Trainer, state: Mapping[str, Any]) -> Path:
    """Write ``state`` (the run's ``state_dict()``) as the checkpoint of the current step,
    atomically, and prune old ones; return its directory.

    Every process calls it; the main one writes, and all wait until the checkpoint is in place.
    """
    if bad := _non_finite(state["model"]):
        raise TrainingFailed(f"refusing to write a checkpoint with non-finite weights ({', '.join(bad[:3])})")
    root = checkpoint_dir(trainer.out_dir)
    final = root / name_for(trainer.state.step)
    strategy = trainer.strategy
    if not strategy.main:
        strategy.barrier()
        return final
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    data = buffer.getvalue()
    meta = {
        "format": FORMAT,
        "step": trainer.state.step,
        "sha256": {STATE_FILE: hashlib.sha256(data).hexdigest()},
        "config": trainer.config.to_dict(),
        "config_hash": trainer.config.hash(),
        "versions": versions(trainer),
    }
    meta["meta_sha256"] = meta_checksum(meta)
    tmp, aside = root / f"{TMP}{final.name}-{os.getpid()}", root / f"{OLD}{final.name}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of this very process
        tmp.mkdir()
        _write(tmp / STATE_FILE, data)
        _write(tmp / META_FILE, json.dumps(meta, indent=2, sort_keys=True).encode())
        _fsync_dir(tmp)
        if final.is_dir() and not final.is_symlink():  # this step again (a resume from before it)
            os.replace(final, aside)  # readers take `aside` as this step until the next rename
        os.replace(tmp, final)
        _fsync_dir(root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            if aside.exists() and not final.exists():
                os.replace(aside, final)
        kept = newest_on_disk(root)
        raise TrainingFailed(f"cannot write the checkpoint of step {trainer.state.step} in {root}: "
                             f"{exc.strerror or exc}; {f'{kept} is kept' if kept else 'no checkpoint was kept'}") from None
    _delete(aside)
    prune(root, trainer.config.run.keep_checkpoints, trainer.state.step)
    strategy.barrier()
    return final


def _delete(path: Path) -> None:
    """Remove a directory of ours: renamed out of the way first, so that a crash half-way never
    leaves a half-deleted checkpoint under a checkpoint's name."""
    if not path.is_dir() or path.is_symlink():
        return
    doomed = path.with_name(f"{DEL}{path.name.lstrip('.')}-{os.getpid()}")
    try:
        os.replace(path, doomed)
    except OSError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def prune(root: Path, keep: int, upto: int | None = None) -> None:
    """Keep the newest ``keep`` checkpoints up to step ``upto``; remove older ones. Only
    directories this store writes (never what a symbolic link points to), and never one of a
    later step: that is one a resume skipped as bad, replaced when the run gets there again."""
    ours = [p for step, p in checkpoints(root)
            if p.name.startswith(PREFIX) and not p.is_symlink() and (upto is None or step <= upto)]
    for old in ours[:-keep]:
        _delete(old)


def recover(root: Path) -> list[str]:
    """Tidy what a crashed or failed write left behind; return what was done, for the log.

    Called when a run starts, before it writes anything. A checkpoint moved aside for a re-write
    whose new copy never arrived is put back; one whose new copy did arrive is removed, and so are
    temporary and half-deleted directories.
    """
    done: list[str] = []
    if not root.is_dir():
        return done
    for entry in sorted(root.iterdir()):
        if entry.is_symlink() or not entry.is_dir():
            continue
        if (aside := _ASIDE.fullmatch(entry.name)) and not (root / aside.group(1)).exists():
            with contextlib.suppress(OSError):  # then readers go on taking it as that step's
                os.replace(entry, root / aside.group(1))
                done.append(f"put back {aside.group(1)} (moved aside by a write that did not finish)")
        elif entry.name.startswith((TMP, OLD, DEL)):
            shutil.rmtree(entry, ignore_errors=True)
            done.append(f"removed {entry.name}")
    return done


def usable(trainer: Trainer) -> Path:
    """The run's checkpoints directory, created; a :class:`BadInput` naming ``run.out_dir`` if it
    cannot be created or written (a file in the way, a read-only or missing file system)."""
    out_dir = trainer.config.run.out_dir
    if not out_dir.strip() or "\0" in out_dir:
        raise BadInput(f"run.out_dir: must name a directory, got {out_dir!r}")
    root = checkpoint_dir(trainer.out_dir)
    probe = root / f".probe-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
    except OSError as exc:
        where = root if exc.filename == str(probe) else exc.filename or root
        raise BadInput(f"run.out_dir: cannot write checkpoints in {out_dir!r} ({where}: {exc.strerror or exc})") from None
    return root


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def step_of(name: str) -> int | None:
    """The step a checkpoint directory's name stands for (``step-…`` or a moved-aside one)."""
    match = _NAME.fullmatch(name) or (_NAME.fullmatch(m.group(1)) if (m := _ASIDE.fullmatch(name)) else None)
    return int(match.group(1)) if match else None


def checkpoints(root: Path) -> list[tuple[int, Path]]:
    """``(step, directory)`` of the checkpoints under ``root``, oldest first: ``step-…`` entries,
    and a moved-aside one for a step whose ``step-…`` is missing (a re-write cut short)."""
    if not root.is_dir():
        return []
    found: dict[int, Path] = {}
    for entry in sorted(root.iterdir(), key=lambda p: not p.name.startswith(PREFIX)):  # step-… first
        step = step_of(entry.name)
        if step is not None and step not in found and (entry.is_dir() or entry.is_symlink()):
            found[step] = entry
    return sorted(found.items())


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories under ``root``, oldest first."""
    return [path for _step, path in checkpoints(root)]


def newest_on_disk(root: Path) -> Path | None:
    found = checkpoints(root)
    return found[-1][1] if found else None


@contextlib.contextmanager
def _regular(path: Path, inside: Path, limit: int | None = None) -> Iterator[BinaryIO]:
    """The regular file at ``path``, which must lie inside ``inside``, open for reading; never
    blocks on a FIFO or reads a device without end."""
    if not path.exists() and not path.is_symlink():
        raise CheckpointError(f"{path}: missing")
    if not path.resolve().is_relative_to(inside):
        raise CheckpointError(f"{path}: a symbolic link to {path.resolve()}, outside {inside}; refused")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise CheckpointError(f"{path}: unreadable ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"{path}: not a regular file; refused")
        if limit is not None and info.st_size > limit:
            raise CheckpointError(f"{path}: {info.st_size} bytes, too large to be one")
        yield f


def _read(path: Path, inside: Path, limit: int | None = None) -> bytes:
    with _regular(path, inside, limit) as f:
        try:
            return f.read()
        except OSError as exc:
            raise CheckpointError(f"{path}: unreadable ({exc.strerror or exc})") from None


def read_meta(path: Path, inside: Path | None = None) -> dict[str, Any]:
    """``meta.json`` of the checkpoint directory ``path``, checked against its own checksum."""
    meta_path = Path(path) / META_FILE
    try:
        meta = json.loads(_read(meta_path, inside or Path(path).resolve(), META_LIMIT))
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{meta_path}: unreadable ({exc})") from None
    if isinstance(meta, dict) and meta.get("format") == 1:
        raise CheckpointError(f"{meta_path}: written by phasetrain 0.1 (checkpoint format 1); this phasetrain "
                              f"reads format {FORMAT}: finish that run with phasetrain 0.1 or start it again")
    if isinstance(meta, dict) and isinstance(meta.get("format"), int) and meta["format"] > FORMAT:
        by = meta.get("versions", {}).get("phasetrain", "?") if isinstance(meta.get("versions"), dict) else "?"
        # Not damaged but newer: resuming from an older checkpoint instead would overwrite it later.
        raise BadInput(f"{meta_path}: written in checkpoint format {meta['format']} by phasetrain {by}; this "
                       f"phasetrain ({_installed('phasetrain')}) reads format {FORMAT}: upgrade phasetrain to resume it")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not a phasetrain checkpoint of format {FORMAT}")
    if meta.get("meta_sha256") != meta_checksum(meta):
        raise CheckpointError(f"{meta_path}: checksum mismatch (modified or damaged)")
    shape = {"step": int, "sha256": dict, "config": dict, "config_hash": str, "versions": dict}
    if wrong := [k for k, kind in shape.items() if not isinstance(meta.get(k), kind) or isinstance(meta.get(k), bool)]:
        raise CheckpointError(f"{meta_path}: {', '.join(wrong)} missing or of the wrong type")
    if not isinstance(meta["sha256"].get(STATE_FILE), str):
        raise CheckpointError(f"{meta_path}: no checksum of {STATE_FILE}")
    return meta


def _warn_if_newer(path: Path, meta: Mapping[str, Any]) -> None:
    newer = []
    for name, theirs in meta["versions"].items():
        ours = _installed(name) if name != "torch" else torch.__version__
        if name != "python" and isinstance(theirs, str) and ours != "unknown" and _release(theirs) > _release(ours):
            newer.append(f"{name} {theirs} (this is {ours})")
    if newer:
        warnings.warn(f"{path} was written by a newer {', '.join(newer)}; it may not load as intended",
                      NewerCheckpoint, stacklevel=2)


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version.split("+")[0])[:3])


_COUNTERS = {"step": int, "batches": int, "phase": str, "phase_step": int, "elapsed": (int, float)}


def _check_state(path: Path, state: Any, meta: Mapping[str, Any]) -> None:
    """What ``torch.load`` returned has the shape of a run's state, with finite weights and
    counters of the right types (``weights_only`` guarantees no code ran; this, that it fits)."""
    where = path / STATE_FILE
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict) or not state["model"]:
        raise CheckpointError(f"{where}: does not hold a phasetrain state (no model weights)")
    for key, kind in (("optimizers", dict), ("lr_schedulers", dict), ("rng", dict), ("trainer", dict), ("plugins", dict)):
        if not isinstance(state.get(key), kind):
            raise CheckpointError(f"{where}: {key!r} is missing or not a {kind.__name__}")
    counters = state["trainer"]
    if bad := [k for k, kind in _COUNTERS.items() if not isinstance(counters.get(k), kind) or isinstance(counters.get(k), bool)
               or (kind is not str and not 0 <= counters[k] < float("inf"))]:
        raise CheckpointError(f"{where}: the counters {', '.join(bad)} are missing, of the wrong type or negative")
    if counters["step"] != meta["step"]:
        raise CheckpointError(f"{where}: holds step {counters['step']} but {META_FILE} says {meta['step']}")
    for group in ("model", "optimizers"):
        if bad := _non_finite(state[group]):
            raise CheckpointError(f"{where}: non-finite values in {group} ({', '.join(bad[:3])})")


def _non_finite(tree: Any, prefix: str = "") -> list[str]:
    if isinstance(tree, torch.Tensor):  # a finite sum means every element is finite; a sum is 5x
        finite = not tree.is_floating_point() or bool(torch.isfinite(tree.sum()))  # cheaper than isfinite
        return [] if finite or bool(torch.isfinite(tree).all()) else [prefix]  # ...which tells overflow apart
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    return [name for key, value in items for name in _non_finite(value, f"{prefix}.{key}" if prefix else str(key))]


def load_dir(path: Path, inside: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify and load one checkpoint directory → (state, meta). Never runs pickled code.
    ``inside``: where its files must lie (default: the directory itself)."""
    path = Path(path)
    inside = inside or path.resolve()
    if not path.resolve().is_relative_to(inside):
        raise CheckpointError(f"{path}: a symbolic link to {path.resolve()}, outside {inside}; refused")
    meta = read_meta(path, inside)
    expected = step_of(path.name)
    if expected is not None and expected != meta["step"]:
        raise CheckpointError(f"{path}: {META_FILE} says step {meta['step']}, not the step its name says")
    state_path = path / STATE_FILE
    with _regular(state_path, inside) as f:
        try:  # hashed as it streams: a huge or damaged file is not held in memory twice
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError as exc:
            raise CheckpointError(f"{state_path}: unreadable ({exc.strerror or exc})") from None
        if digest != meta["sha256"][STATE_FILE]:
            raise CheckpointError(f"{state_path}: checksum mismatch (truncated or modified)")
        _warn_if_newer(path, meta)
        f.seek(0)
        try:
            state = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises UnpicklingError and friends for unsafe content
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{state_path}: refused to load ({first})") from None
    try:
        _check_state(path, state, meta)
    except RecursionError:
        raise CheckpointError(f"{state_path}: nested too deeply to be a phasetrain state") from None
    return state, meta


Accept = Callable[[Path, dict[str, Any], dict[str, Any]], None]


def latest_good(out_dir: Path, report: Any = None, accept: Accept | None = None
                ) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """The newest checkpoint of a run that loads and that ``accept`` applies; bad ones are
    reported through ``report`` and the previous one tried."""
    root = checkpoint_dir(out_dir)
    found = list_checkpoints(root)
    if not found:
        raise CheckpointError(f"no checkpoint to resume from in {root}")
    inside, problems = root.resolve(), []
    for path in reversed(found):
        try:
            return (path, *_loaded(path, inside, accept))
        except CheckpointError as exc:
            problems.append(str(exc))
            if report is not None:
                report(f"skipping bad checkpoint: {exc}")
    raise CheckpointError(f"no good checkpoint in {root}: " + "; ".join(problems))


def _loaded(path: Path, inside: Path, accept: Accept | None) -> tuple[dict[str, Any], dict[str, Any]]:
    state, meta = load_dir(path, inside)
    return accepted(path, state, meta, accept)


def accepted(path: Path, state: dict[str, Any], meta: dict[str, Any], accept: Accept | None
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state, meta)`` once ``accept`` (the run applying it) took it; a state that does not
    apply is a :class:`CheckpointError` naming the checkpoint, so the caller tries an older one.
    Any store's ``latest`` uses this for its ``accept`` argument."""
    if accept is not None:
        try:
            accept(path, state, meta)
        except CheckpointError as exc:  # torch's own messages span lines: one line each
            raise CheckpointError(f"{path}: {' '.join(str(exc).split())}") from None
        except PhasetrainError:  # a refusal that no other checkpoint of the run would change
            raise
        except Exception as exc:
            text = (str(exc).strip().splitlines() or [""])[0]
            raise CheckpointError(f"{path}: its state does not apply: {type(exc).__name__}: {text}") from None
    return state, meta


class LocalStore:
    """Checkpoints under ``<run.out_dir>/checkpoints`` (see the module docstring)."""

    def __init__(self, options: Any = None, ctx: Any = None):
        pass

    def save(self, trainer: Trainer, state: Mapping[str, Any]) -> Path:
        return save(trainer, state)

    def latest(self, path: str | Path, report: Any = None, accept: Accept | None = None
               ) -> tuple[Path, dict[str, Any], dict[str, Any]]:
        """The checkpoint at ``path`` if it is one, else the newest good one of the run at ``path``."""
        path = Path(path)
        if (path / META_FILE).exists() or (path / META_FILE).is_symlink():
            return (path, *_loaded(path, path.resolve(), accept))
        return latest_good(path, report, accept)

    @hookimpl(tryfirst=True)  # before anything writes into the run directory
    def train_start(self, trainer: Trainer) -> None:
        """Refuse an unusable ``run.out_dir`` before the first step; tidy after a crash."""
        if not trainer.strategy.main:
            return
        for line in recover(usable(trainer)):
            print(f"phasetrain: checkpoints: {line}", file=sys.stderr)


@hookimpl
def phasetrain_components() -> list[Component]:
    return [Component("store", "local", LocalStore, NoOptions,
                      "checkpoint directories in the run directory: atomic, checksummed, weights_only", default=True)]
