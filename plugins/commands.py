"""phasetrain's own commands: ``run``, ``config``, ``plugins``, ``presets`` and ``kinds``.

Contributed through ``phasetrain_add_commands`` like any plugin's command, so a plugin can
replace one. ``run`` trains (SIGINT/SIGTERM checkpoint and say how to resume); ``config`` prints
the resolved config; ``plugins`` lists every plugin with its distribution, the components and
hooks it contributes, and every broken plugin with its error; ``kinds`` lists the kinds of
component a config may choose, with who declares them and their default.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tomllib
from typing import Any

from phasetrain import hookimpl

HIDDEN = ("phasetrain_kinds", "phasetrain_components", "phasetrain_presets")


def cmd_run(args: argparse.Namespace) -> int:
    from phasetrain import config as config_mod
    from phasetrain.loop import Trainer

    trainer = Trainer(config_mod.load(args.config, args.overrides), resume=args.resume)
    try:
        if args.resume:
            path = trainer.resume(report=lambda msg: print(f"phasetrain: {msg}", file=sys.stderr))
            if trainer.strategy.main:
                print(f"phasetrain: resuming from {path}")
        with GracefulStop(trainer, args):
            outcome = trainer.fit()
    finally:
        trainer.strategy.close()
    return 0 if outcome.status in ("completed", "interrupted") else 1


class GracefulStop:
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

    def __enter__(self) -> GracefulStop:
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


def cmd_plugins(_args: argparse.Namespace) -> int:
    from phasetrain.registry import load_registry

    registry = load_registry()
    by_plugin: dict[int, list[Any]] = {}
    for entry in registry.components():
        by_plugin.setdefault(id(entry.origin.plugin), []).append(entry.component)
    declared = {name: registry.kind_origin(name) for name in registry.kinds}
    pm = registry.plugin_manager()
    print(f"{'plugin':<16} {'distribution':<26} {'kinds':<22} components / hooks")
    for info in registry.plugins:
        components = by_plugin.get(id(info.plugin), [])
        kinds = sorted({c.kind for c in components})
        parts = [", ".join(c.name for c in components)] if components else []
        own = [k for k, origin in declared.items() if origin is info]
        if own:
            parts.append("declares kinds: " + ", ".join(own))
        hooks = sorted(h.name for h in pm.get_hookcallers(info.plugin) or [] if h.name not in HIDDEN)
        if hooks:
            parts.append("hooks: " + ", ".join(hooks))
        presets = [n for n, (_, origin) in registry.presets().items() if origin is info]
        if presets:
            parts.append("presets: " + ", ".join(presets))
        dist = f"{info.distribution} {info.version}"
        print(f"{info.name:<16} {dist:<26} {','.join(kinds) or '-':<22} {'; '.join(parts)}")
    for info in registry.broken:
        dist = f"{info.distribution} {info.version}"
        print(f"{info.name:<16} {dist:<26} {'BROKEN':<22} {info.error}")
    for text in registry.conflicts():
        print(f"{'(conflict)':<16} {'':<26} {'BROKEN':<22} {text}")
    return 0


def cmd_kinds(_args: argparse.Namespace) -> int:
    from phasetrain.registry import load_registry

    registry = load_registry()
    print(f"{'kind':<13} {'section':<14} {'declared by':<24} {'default':<10} summary")
    for kind in registry.kinds.values():
        origin = registry.kind_origin(kind.name)
        who = origin.distribution if origin else "phasetrain (kernel)"
        default = ",".join(registry.defaults(kind.name)) or ("required" if kind.required else "-")
        section = f"[{kind.key}.NAME]" if kind.many else f"[{kind.key}]"
        print(f"{kind.name:<13} {section:<14} {who:<24} {default:<10} {kind.summary}")
    return 0


def cmd_presets(_args: argparse.Namespace) -> int:
    from phasetrain.registry import load_registry

    for name, (resource, origin) in load_registry().presets().items():
        text = resource.read_text() if hasattr(resource, "read_text") else ""
        first = text.splitlines()[0] if text else ""
        about = first.lstrip("# ").strip() if first.startswith("#") else ""
        try:
            task = tomllib.loads(text).get("task", {}).get("use", "?")
        except (tomllib.TOMLDecodeError, AttributeError):
            task = "?"
        print(f"{name:<20} {task:<12} {origin.distribution:<14} {about}")
    return 0


@hookimpl(tryfirst=True)  # first, so that they come first in --help
def phasetrain_add_commands(subparsers: Any) -> None:
    run = subparsers.add_parser("run", help="train from a preset or a TOML/JSON config file")
    run.add_argument("config", metavar="PRESET_OR_FILE")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, parsed as TOML (repeatable)")
    run.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN",
                     help="continue the latest run of this config, or the run named (version_3, or a path), "
                          "from its latest good checkpoint")
    run.set_defaults(handler=cmd_run)
    cfg = subparsers.add_parser("config", help="print the fully resolved config as TOML")
    cfg.add_argument("config", metavar="PRESET_OR_FILE")
    cfg.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    cfg.set_defaults(handler=cmd_config)
    subparsers.add_parser("plugins", help="list installed plugins, their components and distributions"
                          ).set_defaults(handler=cmd_plugins)
    subparsers.add_parser("presets", help="list the presets installed plugins offer").set_defaults(handler=cmd_presets)
    subparsers.add_parser("kinds", help="list the kinds of component a config may choose").set_defaults(handler=cmd_kinds)
