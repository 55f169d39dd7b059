"""Run directories: a new ``version_N`` per run, a ``latest`` pointer, and a lock while it trains.

``run.out_dir`` ending in ``{version}`` (every preset's, and the default ``runs/default/{version}``)
gives each fresh run a directory of its own beside the earlier ones, the way Lightning's loggers
number theirs::

    runs/regression/version_0/      checkpoints/, metrics.jsonl, run.json, ...
                   /version_1/
                   /latest -> version_1     the run that most recently started training

Any other ``run.out_dir`` is the run's directory exactly as given. Either way:

- the directory is locked while the run trains (``phasetrain.lock``: an ``flock`` that the
  operating system drops when its holder dies, however it dies; the file says who holds it).
  A second writer is refused with a message naming the holder's PID, host and start time; a
  lock left by a killed run is taken over, and the run says so;
- a fresh run refuses a directory that holds an earlier run (its ``run.json``, checkpoints or
  metrics file): a run never deletes or overwrites files it did not write. ``--resume``
  continues that run instead;
- ``--resume`` alone continues the latest run of the config (``latest``), ``--resume RUN`` the
  run it names (``version_3``, or a path).

The plugin implements the kernel's ``run_dir`` hook (``trylast``, so another plugin can lay runs
out differently) and claims the directory around ``train_start``/``train_end``. Under
torch.distributed the main process chooses and locks; the others follow its choice.
"""

from __future__ import annotations

import contextlib
import errno
import datetime
import fcntl
import json
import os
import re
import socket
import sys
import weakref
from pathlib import Path
from typing import Any

from phasetrain import hookimpl
from phasetrain.errors import BadInput, ConfigError, TrainingFailed

VERSION = "{version}"
LATEST = "latest"
LOCK_FILE = "phasetrain.lock"
MANIFEST = "run.json"
_NUMBERED = re.compile(r"version_(\d+)")


# ---------------------------------------------------------------------------------------------
# Versions
# ---------------------------------------------------------------------------------------------


def template_root(out_dir: str) -> Path | None:
    """The directory that holds the versions when ``out_dir`` ends in ``{version}``, else None."""
    path = Path(out_dir)
    if path.name == VERSION:
        return path.parent
    if VERSION in out_dir:
        raise ValueError(f"{VERSION} must be the last part of the path, as in 'runs/NAME/{VERSION}', got {out_dir!r}")
    return None


def versions(root: Path) -> list[str]:
    """The ``version_N`` directories under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p.name) for p in root.iterdir() if (m := _NUMBERED.fullmatch(p.name)) and p.is_dir()]
    return [name for _n, name in sorted(found)]


def next_version(names: list[str]) -> int:
    """One more than the highest ``version_N`` in ``names`` (0 for none)."""
    numbers = [int(m.group(1)) for n in names if (m := _NUMBERED.fullmatch(n))]
    return max(numbers, default=-1) + 1


def reserve(root: Path) -> Path:
    """Create and return a new ``version_N`` under ``root``. ``mkdir`` is atomic, so two runs
    starting at once never get the same one."""
    root.mkdir(parents=True, exist_ok=True)
    number = next_version([p.name for p in root.iterdir()])
    while True:
        path = root / f"version_{number}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            number += 1


def point_latest(root: Path, run: Path) -> None:
    """Make ``root/latest`` a relative symlink to ``run``, replacing the old one atomically."""
    link = root / LATEST
    if link.exists() and not link.is_symlink():
        return  # a file or directory of someone else's: leave it alone
    tmp = root / f".{LATEST}-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(run.name, tmp)
    os.replace(tmp, link)


def resolve(out_dir: str, resume: bool | str) -> Path:
    """The directory a run of ``out_dir`` uses: given ``resume``, the run to continue; for a
    fresh versioned run, the versions' root (the caller reserves a version in it)."""
    root = template_root(out_dir)
    if resume is False:
        return root if root is not None else Path(out_dir)
    if resume is True:
        if root is None:
            return Path(out_dir)
        if not (root / LATEST).is_dir():
            raise BadInput(f"nothing to resume: {root} holds no run yet (run.out_dir = {out_dir!r})")
        return root / os.readlink(root / LATEST) if (root / LATEST).is_symlink() else root / LATEST
    named = [p for p in ([root / resume] if root is not None else []) + [Path(resume)] if p.is_dir()]
    if not named:
        known = ", ".join(versions(root)) if root is not None else ""
        raise BadInput(f"--resume {resume}: no such run" + (f" under {root} (there: {known or 'none'})" if root else ""))
    return named[0]


# ---------------------------------------------------------------------------------------------
# The lock
# ---------------------------------------------------------------------------------------------


class Lock:
    """An exclusive, non-blocking ``flock`` on ``path`` whose file names its holder.

    ``flock`` belongs to the open file: the operating system releases it when the holder exits
    or is killed, so a lock file left behind by a crash is *stale* and the next run takes it
    over. A holder on another host cannot be seen from here (``flock`` may not reach across a
    network file system), so its lock is only taken over by hand, by deleting the file.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None
        self.took_over: dict[str, Any] | None = None  # the stale holder, when there was one

    @staticmethod
    def holder_text(holder: dict[str, Any]) -> str:
        return (f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
                f"started {holder.get('started', '?')}")

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def acquire(self, what: str = "run") -> None:
        """Take the lock or raise :class:`BadInput` naming who holds it."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise BadInput(f"{self.path.parent} is in use by another {what}: {self.holder_text(self.read())} "
                               f"({self.path}); wait for it to end, or choose another directory") from None
            try:  # the holder may have removed the file between our open and our flock: try again
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = self.read()
        host = socket.gethostname()
        if previous.get("host") not in (None, host):
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise BadInput(f"{self.path.parent} is locked by a {what} on another host: {self.holder_text(previous)}; "
                           f"if it is gone, delete {self.path}")
        self.took_over = previous or None
        mine = {"pid": os.getpid(), "host": host, "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "argv": sys.argv}
        self.fd = fd  # held from here on: release() closes it whatever happens next
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(mine).encode(), 0)
        os.fsync(fd)

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # first, so that nobody reads a finished holder as stale
        os.close(self.fd)  # drops the flock
        self.fd = None

    held = property(lambda self: self.fd is not None)


# ---------------------------------------------------------------------------------------------
# The hooks
# ---------------------------------------------------------------------------------------------


class Claim:
    """What this plugin knows about one Trainer's directory."""

    def __init__(self, path: Path, reserved: bool):
        self.path, self.reserved, self.started = path, reserved, False
        self.lock = Lock(path / LOCK_FILE)


_claims: weakref.WeakKeyDictionary[Any, Claim] = weakref.WeakKeyDictionary()


def _drop_if_unused(path: Path) -> None:
    # A version reserved by a Trainer that never trained is empty: give its number back.
    with contextlib.suppress(OSError):
        path.rmdir()


@hookimpl(trylast=True)
def run_dir(trainer: Any, config: Any, resume: bool | str) -> Path:
    out_dir = config.run.out_dir
    if not out_dir.strip() or "\0" in out_dir:  # "" would mean the working directory
        raise BadInput(f"run.out_dir: must name a directory, got {out_dir!r}")
    try:
        path = resolve(out_dir, resume)
    except ValueError as exc:
        raise ConfigError(config.source or "<config>", "run.out_dir", str(exc)) from None
    fresh = resume is False and template_root(out_dir) is not None
    strategy = trainer.strategy
    if fresh:
        path = reserve(path) if strategy.main else path
        if strategy.size > 1:  # every process follows the main one's choice
            path = Path(strategy.gather(str(path))[0])
        if strategy.main:
            weakref.finalize(trainer, _drop_if_unused, path)
    _claims[trainer] = Claim(path, reserved=fresh)
    return path


def holds_a_run(path: Path) -> bool:
    """Whether ``path`` holds the files of a run (this version's manifest, or the checkpoints and
    metrics file of a run written before it)."""
    return any((path / name).exists() for name in (MANIFEST, "metrics.jsonl")) or any(
        (path / "checkpoints").glob("step-*"))


@hookimpl(wrapper=True, tryfirst=True)
def train_start(trainer: Any) -> Any:
    claim = _claims.get(trainer)
    if claim is not None and trainer.strategy.main:
        try:
            _claim(trainer, claim)
        except OSError as exc:  # a full disk, a read-only or unusable directory: one line, nothing half-written
            claim.lock.release()
            where = f"{exc.filename or claim.path}: {exc.strerror or exc}"
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
                raise TrainingFailed(f"cannot write the run directory ({where}); its checkpoints are kept") from None
            raise BadInput(f"run.out_dir: cannot write in {str(claim.path)!r} ({where})") from None
    return (yield)


def _claim(trainer: Any, claim: Claim) -> None:
    path, continuing = claim.path, trainer.resumed_from is not None or trainer.state.step > 0
    try:  # checkpoints/ too: a path that cannot hold a run directory fails here, before any file is written
        (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"run.out_dir: cannot make the run directory {str(path)!r} ({exc.filename or path}: "
                       f"{exc.strerror or exc})") from None
    claim.lock.acquire()
    try:
        if not claim.started and not continuing and holds_a_run(path):
            raise BadInput(f"{path} holds an earlier run: continue it with --resume, or give this one another "
                           f"run.out_dir (ending it in /{VERSION} gives every run a new directory)")
        if claim.lock.took_over:
            print(f"phasetrain: took over the lock of a run that ended without releasing it "
                  f"({Lock.holder_text(claim.lock.took_over)})", file=sys.stderr)
        if not claim.started:
            _write_manifest(trainer, path, continuing)
        if template_root(trainer.config.run.out_dir) is not None:
            point_latest(path.parent, path)
    except BaseException:
        claim.lock.release()
        raise
    claim.started = True


def _write_manifest(trainer: Any, path: Path, continuing: bool) -> None:
    """``run.json``: when and how the run started (and each time it was resumed)."""
    manifest = path / MANIFEST
    try:
        data = json.loads(manifest.read_text()) if manifest.exists() else {}
    except (OSError, ValueError):
        data = {}
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    entry = {"time": now, "host": socket.gethostname(), "pid": os.getpid(), "argv": sys.argv, "step": trainer.state.step}
    data = data if isinstance(data, dict) else {}
    data.setdefault("created", now)
    data["config_hash"] = trainer.config.hash()
    data.setdefault("starts", []).append(entry)
    tmp = path / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, manifest)


@hookimpl(wrapper=True, trylast=True)
def train_end(trainer: Any) -> Any:
    try:
        return (yield)
    finally:  # after every logger has closed its files
        claim = _claims.get(trainer)
        if claim is not None:
            claim.lock.release()
