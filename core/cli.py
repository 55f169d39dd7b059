"""The ``phasetrain`` command (also ``python -m phasetrain``).

Every command comes from a plugin through ``phasetrain_add_commands``, phasetrain's own
(``run``, ``config``, ``plugins``, ...) included, so a plugin can replace any of them. Exit codes:
0 done, 2 bad input (config, arguments, unknown names, checkpoints), 1 a failure during
training, 141 the reader of the output went away (``phasetrain presets | head -1``: quietly, as
a process killed by SIGPIPE). Errors print one line and no traceback; ``--debug`` (or
``PHASETRAIN_DEBUG=1``) adds it. A signal before a command installs its own handlers (``run``
checkpoints on one) exits 130 (SIGINT) or 143 (SIGTERM) with a message, whatever was loading.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from typing import Any

from phasetrain.errors import BadInput, PhasetrainError, PluginError


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors are bad input too
        self.print_usage(sys.stderr)
        print(f"phasetrain: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def parser() -> argparse.ArgumentParser:
    """The command line: ``--debug`` and every plugin's subcommands."""
    from phasetrain import __version__
    from phasetrain.registry import load_registry

    p = Parser(prog="phasetrain", description="Train PyTorch models composed from plugins.")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    p.add_argument("--version", action="version", version=f"phasetrain {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    registry = load_registry()
    for impl in reversed(registry.plugin_manager().hook.phasetrain_add_commands.get_hookimpls()):  # pluggy's order
        label, before = registry.label_of(impl.plugin), dict(sub.choices)
        try:
            impl.function(*[{"subparsers": sub}[name] for name in impl.argnames])
        except Exception as exc:  # argparse refuses a taken name on Python 3.11+; any other bug
            raise PluginError(f"{label}: phasetrain_add_commands failed: {exc}") from exc
        if taken := [name for name, cmd in before.items() if sub.choices.get(name) is not cmd]:
            raise PluginError(f"{label}: phasetrain_add_commands took the existing command {taken[0]!r}")
    return p


def _warning(message: Any, *_args: Any, **_kwargs: Any) -> None:
    print(f"phasetrain: warning: {message}", file=sys.stderr)


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(signum)


def main(argv: Sequence[str] | None = None) -> int:
    debug = os.environ.get("PHASETRAIN_DEBUG", "") not in ("", "0") or "--debug" in (argv or sys.argv[1:])
    warnings.showwarning = _warning
    if threading.current_thread() is threading.main_thread():  # the only thread that may handle signals
        signal.signal(signal.SIGTERM, _interrupt)  # like Ctrl-C rather than a silent death
    try:
        args = parser().parse_args(argv)
        if (handler := getattr(args, "handler", None)) is None:
            raise PluginError(f"command {args.command!r} has no handler (set_defaults(handler=...))")
        code = handler(args)
        sys.stdout.flush()  # a closed pipe shows here at the latest, not at interpreter exit
        return code
    except BrokenPipeError:  # the reader went away: no traceback, nothing more to write
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt as exc:
        signum = exc.args[0] if exc.args and isinstance(exc.args[0], int) else signal.SIGINT
        print(f"phasetrain: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum
    except Exception as exc:
        if debug:
            import traceback

            traceback.print_exc()
        line = (str(exc).strip().splitlines() or [""])[0]  # one line: an error from C++ may carry a backtrace
        if isinstance(exc, BadInput):
            print(f"phasetrain: error: {line}", file=sys.stderr)
        else:
            text = line if isinstance(exc, PhasetrainError) else f"{type(exc).__name__}: {line}"
            print(f"phasetrain: training failed: {text}{'' if debug else ' (--debug shows the traceback)'}",
                  file=sys.stderr)
        return exc.exit_code if isinstance(exc, PhasetrainError) else 1


if __name__ == "__main__":
    raise SystemExit(main())
