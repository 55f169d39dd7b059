"""Crash a checkpoint write after any file-system operation, in-process, and look at what a
resume would find at that instant.

    python -m tests.crash_injector            # every crash point of the scenarios below, a table

While :func:`crash_after` is active, every operation that changes the disk (``os.mkdir``,
``os.replace``, ``os.rename``, ``os.fsync``, ``os.unlink``, ``os.rmdir``, and so the ones
``pathlib`` and ``shutil.rmtree`` are made of) is counted; right after the ``n``-th one succeeds,
the run directory is copied as it is (the "disk image" a crash at that instant would leave) and
:class:`Crash` is raised. ``Crash`` is a ``BaseException``: no ``except OSError`` or ``except
Exception`` of the code under test can swallow it, so nothing that code would do after the crash
happens on the image. No timing is involved: every point is hit, in order.

:func:`scenarios` writes a small ``regression`` run with checkpoints at steps 2 and 4 and then
saves, with a crash injected, either step 6 (a new checkpoint; ``keep_checkpoints = 2`` prunes
step 2) or step 4 again (a re-write of an existing checkpoint, what a resumed run does when it
reaches a step that a resume skipped as bad). :func:`check_image` states the invariant: the image
always has a loadable newest checkpoint, of the step being written or of the newest step before
it, and once the store's start-up recovery and one more save have run, nothing temporary is left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import phasetrain
from phasetrain.errors import PhasetrainError
from phasetrain.plugins import store

#: The os functions that change what is on disk.
OPERATIONS = ("mkdir", "replace", "rename", "fsync", "unlink", "rmdir")


class Crash(BaseException):
    """The simulated crash: the process "dies" right after an operation."""


class Recorder:
    """Counts disk operations; crashes after the ``at``-th (counting from 0), imaging ``watch``."""

    def __init__(self, at: int | None = None, watch: Path | None = None, image: Path | None = None):
        self.at, self.watch, self.image = at, watch, image
        self.done: list[str] = []
        self.crashed = False  # from then on, operations (the imaging's own) are not counted

    def wrap(self, name: str, real: Any) -> Any:
        def operation(*args: Any, **kwargs: Any) -> Any:
            result = real(*args, **kwargs)  # an operation that fails changed nothing: no crash point
            if self.crashed:
                return result
            self.done.append(f"{name}({', '.join(_short(a) for a in args)})")
            if self.at is not None and len(self.done) - 1 == self.at:
                self.crashed = True
                if self.watch is not None and self.image is not None:
                    shutil.copytree(self.watch, self.image, symlinks=True)
                raise Crash(self.done[-1])
            return result

        return operation


def _short(arg: Any) -> str:
    if isinstance(arg, int) and os.path.exists(f"/proc/self/fd/{arg}"):  # fsync(fd): name the file
        return Path(os.readlink(f"/proc/self/fd/{arg}")).name
    return Path(arg).name if isinstance(arg, (str, os.PathLike)) else str(arg)


@contextlib.contextmanager
def crash_after(at: int | None, watch: Path | None = None, image: Path | None = None) -> Iterator[Recorder]:
    """Count disk operations (``at=None``) or crash right after operation number ``at``, copying
    ``watch`` to ``image`` first."""
    recorder = Recorder(at, watch, image)
    saved = {name: getattr(os, name) for name in OPERATIONS}
    try:
        for name, real in saved.items():
            setattr(os, name, recorder.wrap(name, real))
        yield recorder
    finally:
        for name, real in saved.items():
            setattr(os, name, real)


OVERRIDES = ["run.steps=4", "run.checkpoint_every=2", "run.keep_checkpoints=2", "run.device='cpu'",
             "observers={}", "task.n_train=64", "task.n_eval=16", "task.hidden=8"]

#: What is saved, with a crash: a new checkpoint (and step 2 pruned), or step 4 written again.
SCENARIOS = {"new step 6": 6, "re-write step 4": 4}


def base_run(where: Path) -> Any:
    """A finished run with checkpoints at steps 2 and 4 in ``where``; its Trainer."""
    trainer = phasetrain.Trainer.from_config("regression", [*OVERRIDES, f"run.out_dir='{where}'"])
    trainer.fit()
    return trainer


def save_at(trainer: Any, run_dir: Path, step: int) -> None:
    """Save ``trainer``'s state as step ``step`` of the run in ``run_dir``, through its store."""
    trainer.out_dir, trainer.state.step = run_dir, step
    trainer.store.save(trainer, trainer.checkpoint_state())


def operations(trainer: Any, base: Path, step: int, scratch: Path) -> list[str]:
    """The disk operations of one save of ``step`` on a copy of ``base``, without a crash."""
    work = scratch / "count"
    shutil.copytree(base, work)
    with crash_after(None) as recorder:
        save_at(trainer, work, step)
    shutil.rmtree(work)
    return recorder.done


def crash_image(trainer: Any, base: Path, step: int, at: int, scratch: Path) -> tuple[Path, str]:
    """The run directory as a crash right after operation ``at`` of saving ``step`` on a copy of
    ``base`` leaves it, and that operation."""
    work, image = scratch / f"work-{step}-{at}", scratch / f"image-{step}-{at}"
    shutil.copytree(base, work)
    try:
        with crash_after(at, watch=work, image=image):
            save_at(trainer, work, step)
    except Crash as crash:
        shutil.rmtree(work)
        return image, str(crash)
    raise AssertionError(f"no operation number {at} in saving step {step}")


def check_image(trainer: Any, image: Path, step: int, before: int) -> int:
    """The invariant; returns the step a resume from ``image`` continues at."""
    path, state, _meta = store.latest_good(image)
    resumed = state["trainer"]["step"]
    assert resumed in (step, before), f"resumed at {resumed}, neither the new step {step} nor {before}"
    assert path.name == store.name_for(resumed) or path.name.startswith(store.OLD), path
    store.recover(store.checkpoint_dir(image))  # the next start
    again = store.latest_good(image)[1]["trainer"]["step"]
    assert again == resumed, f"recovery changed the newest checkpoint from {resumed} to {again}"
    save_at(trainer, image, resumed + 2)  # and its next save: nothing temporary is left
    left = [p.name for p in store.checkpoint_dir(image).iterdir() if p.name.startswith((store.TMP, store.OLD, store.DEL))]
    assert not left, f"left behind: {left}"
    return resumed


def main(scratch: Path | None = None) -> int:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        scratch = scratch or Path(tmp)
        base = scratch / "base"
        trainer = base_run(base)
        print(f"{'scenario':<16} {'crash right after':<52} resumes at")
        failures = 0
        for label, step in SCENARIOS.items():
            for at, op in enumerate(operations(trainer, base, step, scratch)):
                image, _ = crash_image(trainer, base, step, at, scratch)
                try:
                    outcome = f"step {check_image(trainer, image, step, before=4)}"
                except (AssertionError, PhasetrainError) as exc:
                    outcome, failures = f"FAILED: {exc}", failures + 1
                print(f"{label:<16} {at:>2} {op:<49} {outcome}")
                shutil.rmtree(image)
        print("every crash point leaves a resumable newest checkpoint" if not failures else f"{failures} failed")
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
