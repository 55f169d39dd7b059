"""The ``phasetrain`` command (also ``python -m phasetrain``).

Exit codes: 0 done, 2 bad input (config, arguments, unknown names, checkpoints), 1 a failure
during training. Bad input prints one line and no traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
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
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="train from a preset or a TOML/JSON config file")
    run.add_argument("config", metavar="PRESET_OR_FILE")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, parsed as TOML (repeatable)")
    run.add_argument("--resume", action="store_true", help="continue from the latest good checkpoint")
    cfg = sub.add_parser("config", help="print the fully resolved config as TOML")
    cfg.add_argument("config", metavar="PRESET_OR_FILE")
    cfg.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    sub.add_parser("plugins", help="list installed plugins, their components and distributions")
    sub.add_parser("presets", help="list the presets installed plugins offer")
    _add_plugin_commands(sub)
    return p


def _add_plugin_commands(sub: Any) -> None:
    """Let installed plugins add subcommands (the ``phasetrain_add_commands`` hook); each one sets
    ``handler`` with ``set_defaults``. A plugin that takes a name already in use is named."""
    from phasetrain.registry import load_registry

    registry = load_registry()
    hook = registry.plugin_manager().hook.phasetrain_add_commands
    for impl in reversed(hook.get_hookimpls()):  # pluggy's calling order
        label = next((i.label for i in registry.plugins if i.plugin is impl.plugin), repr(impl.plugin))
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
    from phasetrain import distributed

    cfg = config_mod.load(args.config, args.overrides)
    try:
        return _train(cfg, args)
    finally:
        distributed.shutdown()


def _train(cfg: Any, args: argparse.Namespace) -> int:
    from phasetrain.loop import Trainer

    trainer = Trainer(cfg)
    if args.resume:
        path = trainer.resume(report=lambda msg: print(f"phasetrain: {msg}", file=sys.stderr))
        if trainer.world.main:
            print(f"phasetrain: resuming from {path}")
    with _graceful_stop(trainer, args):
        outcome = trainer.fit()
    return 0 if outcome.status in ("completed", "interrupted") else 1


class _graceful_stop:
    """SIGINT/SIGTERM: finish the current step, checkpoint, say how to resume, exit 0.
    A second signal exits at once; checkpoints are atomic, so nothing is corrupted."""

    def __init__(self, trainer: Any, args: argparse.Namespace):
        self.trainer, self.args = trainer, args
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        import os

        if self.trainer.stop_requested:
            os._exit(128 + signum)
        self.trainer.stop_requested = True
        print(f"\nphasetrain: {signal.Signals(signum).name} received; stopping after this step "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> _graceful_stop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        if self.trainer.stop_requested and self.trainer.world.main:
            sets = "".join(f" --set {s}" for s in self.args.overrides)
            print(f"phasetrain: stopped at step {self.trainer.state.step}; resume with:\n"
                  f"  phasetrain run {self.args.config}{sets} --resume", flush=True)


def cmd_config(args: argparse.Namespace) -> int:
    from phasetrain import config as config_mod

    print(config_mod.to_toml(config_mod.load(args.config, args.overrides)), end="")
    return 0


def cmd_plugins(_args: argparse.Namespace) -> int:
    from phasetrain.registry import load_registry

    registry = load_registry()
    by_plugin: dict[str, list[str]] = {}
    for entry in registry.components():
        key = f"{entry.origin.distribution}:{entry.origin.name}"
        by_plugin.setdefault(key, []).append(f"{entry.component.kind}:{entry.component.name}")
    pm = registry.plugin_manager()
    print(f"{'plugin':<16} {'distribution':<26} {'kinds':<22} components / hooks")
    for info in registry.plugins:
        components = by_plugin.get(f"{info.distribution}:{info.name}", [])
        kinds = sorted({c.split(':')[0] for c in components})
        hooks = sorted(
            h.name for h in pm.get_hookcallers(info.plugin) or []
            if h.name not in ("phasetrain_components", "phasetrain_presets")
        )
        what = ", ".join(c.split(":", 1)[1] for c in components)
        if hooks:
            what = (what + "; " if what else "") + "hooks: " + ", ".join(hooks)
        names = [n for n, (_, origin) in registry.presets().items() if origin is info]
        if names:
            what = (what + "; " if what else "") + "presets: " + ", ".join(names)
        dist = f"{info.distribution} {info.version}"
        print(f"{info.name:<16} {dist:<26} {','.join(kinds) or '-':<22} {what}")
    return 0


def cmd_presets(_args: argparse.Namespace) -> int:
    import tomllib

    from phasetrain.registry import load_registry

    for name, (resource, origin) in load_registry().presets().items():
        first = resource.read_text().splitlines()[0] if hasattr(resource, "read_text") else ""
        about = first.lstrip("# ").strip() if first.startswith("#") else ""
        try:
            task = tomllib.loads(resource.read_text()).get("task", {}).get("use", "?")
        except tomllib.TOMLDecodeError:
            task = "?"
        print(f"{name:<20} {task:<12} {origin.distribution:<14} {about}")
    return 0


COMMANDS = {"run": cmd_run, "config": cmd_config, "plugins": cmd_plugins, "presets": cmd_presets}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        handler = COMMANDS.get(args.command) or getattr(args, "handler", None)
        if handler is None:
            raise PluginError(f"command {args.command!r} has no handler (set_defaults(handler=...))")
        return handler(args)
    except BadInput as exc:
        print(f"phasetrain: error: {exc}", file=sys.stderr)
        return 2
    except PhasetrainError as exc:
        print(f"phasetrain: training failed: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("phasetrain: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or a crash inside training: show where, then exit 1
        import traceback

        traceback.print_exc()
        print(f"phasetrain: training failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
