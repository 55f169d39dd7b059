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
import shlex
import signal
import sys
import tomllib
from typing import Any

from phasetrain import hookimpl

HIDDEN = ("phasetrain_kinds", "phasetrain_components", "phasetrain_presets")


def cmd_run(args: argparse.Namespace) -> int:
    """Train. A signal before training starts exits 130/143 with nothing written (the command
    line's own handling, see ``phasetrain.cli``); once it has started, the run checkpoints and
    exits 0 (:class:`GracefulStop`)."""
    from phasetrain import config as config_mod
    from phasetrain.loop import Trainer

    # a group that torchrun --max-restarts started again continues the run it was training
    from phasetrain.plugins.distributed import restarted, resume_on_restart

    trainer = Trainer(config_mod.load(args.config, args.overrides), resume=args.resume or restarted())
    with GracefulStop(trainer, args, started=False) as stop:
        try:
            if args.resume or resume_on_restart(trainer):
                path = trainer.resume(report=lambda msg: print(f"phasetrain: {msg}", file=sys.stderr))
                if trainer.strategy.main:
                    print(f"phasetrain: resuming from {path}")
                if trainer.state.step >= trainer.config.run.steps:  # nothing to train, nothing to rewrite
                    if trainer.strategy.main:
                        print(f"phasetrain: the run already finished at step {trainer.state.step} (run.steps = "
                              f"{trainer.config.run.steps}); to train further, raise run.steps, e.g. "
                              f"--set run.steps={2 * trainer.config.run.steps}")
                    return 0
            stop.started = True
            outcome = trainer.fit()
        finally:
            trainer.strategy.close()
    return 0 if outcome.status in ("completed", "stopped", "interrupted") else 1


def command_line(args: argparse.Namespace, *extra: str) -> str:
    """The command that ran, as it would be typed again (shell-quoted), plus ``extra``: the
    executable that actually ran, not whatever ``phasetrain`` is on PATH."""
    script = sys.argv[0] if sys.argv and sys.argv[0] else "phasetrain"
    name = os.path.basename(script)
    exe = [sys.executable, "-m", "phasetrain"] if name == "__main__.py" else \
        [script] if name.startswith("phasetrain") else ["phasetrain"]
    sets = [word for item in args.overrides for word in ("--set", item)]
    return shlex.join([*exe, args.command, args.config, *sets, *extra])


class GracefulStop:
    """SIGINT/SIGTERM once training has started: finish the current step, checkpoint, say how to
    resume, exit 0. Before it has started (``started`` false) the signal interrupts at once, as
    the command line does (130/143), since nothing has been written yet. A second signal exits at
    once; checkpoints are atomic, so nothing is corrupted."""

    def __init__(self, trainer: Any, args: argparse.Namespace, started: bool = True):
        self.trainer, self.args, self.started = trainer, args, started
        self.previous: dict[int, Any] = {}
        self.signalled = False  # a plugin may stop the run too (early stopping): no resume hint then

    def _handle(self, signum: int, _frame: Any) -> None:
        if not self.started:
            raise KeyboardInterrupt(signum)  # the command line reports it: exit 128 + signum
        if self.trainer.stop_requested:
            os._exit(128 + signum)
        self.signalled = True
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
        if self.started and self.signalled and self.trainer.stop_requested and self.trainer.strategy.main:
            print(f"phasetrain: stopped at step {self.trainer.state.step}; resume with:\n"
                  f"  {command_line(self.args, '--resume', str(self.trainer.out_dir))}", flush=True)


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
    rows = [("kind", "section", "declared by", "default", "summary")]
    for kind in registry.kinds.values():
        origin = registry.kind_origin(kind.name)
        who = origin.distribution if origin else "phasetrain (kernel)"
        default = ",".join(registry.defaults(kind.name)) or ("required" if kind.required else "-")
        section = f"[{kind.key}.NAME]" if kind.many else f"[{kind.key}]"
        rows.append((kind.name, section, who, default, kind.summary))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]  # columns fit the longest name
    for row in rows:
        print(" ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)) + " " + row[4])
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
