"""Errors a user can cause, and the exit codes the command maps them to.

Every error here carries a message meant for a person: it says what is wrong, where, and
(when we know) how to fix it. The command prints ``str(error)`` on one line and exits with
``error.exit_code``; no traceback is shown for these (``--debug`` shows one).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PhasetrainError(Exception):
    """Base class of phasetrain's user-facing errors."""

    exit_code = 1


class BadInput(PhasetrainError):
    """Something the user gave us (config, arguments, checkpoint) is wrong: exit code 2."""

    exit_code = 2


class ConfigError(BadInput):
    """A config value is missing, unknown, mistyped or out of range.

    ``source`` is the file (or ``--set``) the value came from and ``path`` the dotted key.
    """

    def __init__(self, source: str, path: str, message: str):
        self.source, self.path, self.message = source, path, message
        where = f"{source}: " if source else ""
        field = f"{path}: " if path else ""
        super().__init__(f"{where}{field}{message}")


class UnknownComponent(BadInput):
    """A config names a component that no installed plugin provides."""

    def __init__(self, kind: str, name: str, available: Iterable[str], hint: str = ""):
        self.kind, self.name = kind, name
        self.available = sorted(available)
        close = difflib.get_close_matches(str(name), self.available, n=1)
        guess = f"; did you mean {close[0]!r}?" if close else ""
        names = ", ".join(self.available) or "none installed"
        super().__init__(f"unknown {kind} {name!r} (available: {names}){guess}{hint}")


class PluginError(BadInput):
    """An installed plugin is broken: it fails to import, clashes with another, or
    implements a hook that does not exist. The message names the plugin's distribution."""


class CheckpointError(BadInput):
    """A checkpoint is missing, truncated, corrupt or unsafe to load."""


class TrainingFailed(PhasetrainError):
    """Training could not go on (for example the loss stayed non-finite): exit code 1."""

    exit_code = 1


class HookFailed(TrainingFailed):
    """A plugin's hook raised during a run: the message names the hook, the plugin, its
    distribution and the step; the original exception is the ``__cause__``."""
