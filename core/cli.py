"""The ``phasetrain`` command (also ``python -m phasetrain``).

The kernel's own commands are ``run`` and ``config``; the others (``plugins``, ``presets``,
``report``, ...) come from plugins through ``phasetrain_add_commands``. Exit codes: 0 done, 2 bad
input (config, arguments, unknown names, checkpoints), 1 a failure during training. Errors print
one line and no traceback; ``--debug`` (or ``PHASETRAIN_DEBUG=1``) adds the traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from phasetrain.errors import BadInput, PhasetrainError, PluginError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors are bad input too
        self.print_usage(sys.stderr)
        print(f"phasetrain: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="phasetrain", description="Train PyTorch models composed from plugins.")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="train from a preset or a TOML/JSON config file")
    run.add_argument("config", metavar="PRESET_OR_FILE")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, parsed as TOML (repeatable)")
    run.add_argument("--resume", action="store_true", help="continue from the latest good checkpoint")
    run.set_defaults(handler=cmd_run)
    cfg = sub.add_parser("config", help="print the fully resolved config as TOML")
    cfg.add_argument("config", metavar="PRESET_OR_FILE")
    cfg.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    cfg.set_defaults(handler=cmd_config)
    _add_plugin_commands(sub)
    return p


def _add_plugin_commands(sub: Any) -> None:
    """Let installed plugins add subcommands (``phasetrain_add_commands``); each one sets
    ``handler`` with ``set_defaults``. A plugin that takes a name already in use is named."""
    from phasetrain.registry import load_registry

    registry = load_registry()
    hook = registry.plugin_manager().hook.phasetrain_add_commands
    for impl in reversed(hook.get_hookimpls()):  # pluggy's calling order
        label = registry.label_of(impl.plugin)
        before = dict(sub.choices)
        try:
            impl.function(*[{"subparsers": sub}[name] for name in impl.argnames])
        except Exception as exc:  # argparse refuses a taken name on Python 3.11+; any other bug
            raise PluginError(f"{label}: phasetrain_add_commands failed: {exc}") from exc
        taken = [name for name, parser in before.items() if sub.choices.get(name) is not parser]
        if taken:
            raise PluginError(f"{label}: phasetrain_add_commands took the existing command {taken[0]!r}")


def cmd_run(args: argparse.Namespace) -> int:
    from phasetrain import config as config_mod
    from phasetrain.loop import Trainer

    trainer = Trainer(config_mod.load(args.config, args.overrides))
    try:
        if args.resume:
            path = trainer.resume(report=lambda msg: print(f"phasetrain: {msg}", file=sys.stderr))
            if trainer.strategy.main:
                print(f"phasetrain: resuming from {path}")
        with _graceful_stop(trainer, args):
            outcome = trainer.fit()
    finally:
        trainer.strategy.close()
    return 0 if outcome.status in ("completed", "interrupted") else 1


class _graceful_stop:
    """SIGINT/SIGTERM: finish the current step, checkpoint, say how to resume, exit 0.
    A second signal exits at once; checkpoints are atomic, so nothing is corrupted."""

    def __init__(self, trainer: Any, args: argparse.Namespace):
        self.trainer, self.args = trainer, args
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.trainer.stop_requested:
            os._exit(128 + signum)
        self.trainer.request_stop()
        print(f"\nphasetrain: {signal.Signals(signum).name} received; stopping after this step "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> _graceful_stop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        if self.trainer.stop_requested and self.trainer.strategy.main:
            sets = "".join(f" --set {s}" for s in self.args.overrides)
            print(f"phasetrain: stopped at step {self.trainer.state.step}; resume with:\n"
                  f"  phasetrain run {self.args.config}{sets} --resume", flush=True)


def cmd_config(args: argparse.Namespace) -> int:
    from phasetrain import config as config_mod

    print(config_mod.to_toml(config_mod.load(args.config, args.overrides)), end="")
    return 0


def _warning(message: Any, category: type, *_args: Any, **_kwargs: Any) -> None:
    print(f"phasetrain: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    debug = os.environ.get("PHASETRAIN_DEBUG", "") not in ("", "0") or "--debug" in (argv or sys.argv[1:])
    warnings.showwarning = _warning
    try:
        args = _parser().parse_args(argv)
        handler = getattr(args, "handler", None)
        if handler is None:
            raise PluginError(f"command {args.command!r} has no handler (set_defaults(handler=...))")
        return handler(args)
    except KeyboardInterrupt:
        print("phasetrain: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            import traceback

            traceback.print_exc()
        if isinstance(exc, BadInput):
            print(f"phasetrain: error: {exc}", file=sys.stderr)
        else:
            text = str(exc) if isinstance(exc, PhasetrainError) else f"{type(exc).__name__}: {exc}"
            hint = "" if debug else " (--debug shows the traceback)"
            print(f"phasetrain: training failed: {text}{hint}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, PhasetrainError) else 1


if __name__ == "__main__":
    raise SystemExit(main())
