"""The hook contract between the phasetrain kernel and its plugins.

Every hook is one function below whose body is only its docstring. The docstring states when the
hook fires, its arguments, what a return value means and how implementations are ordered. An
implementation may accept any subset of a hook's arguments (pluggy passes only the names it asks
for), so arguments can be added later without breaking plugins. ``docs/hooks.md`` mirrors this
file and a test keeps the two in step.

The whole protocol of one run, in order (``Trainer.fit``)::

    train_start(trainer)
    while trainer.step < run.steps:
        phase = schedule.phase(trainer)             # the schedule component decides
        if phase changed:
            phase_enter(trainer, phase, previous)
        pre_step(trainer, step)
        metrics = run_step(trainer, step, phase)    # first non-None result wins
        post_step(trainer, step, metrics)
        if run.eval_every divides step:
            eval_end(trainer, step, metrics)        # after task.evaluate()
        if run.checkpoint_every divides step:
            checkpoint(trainer, state)              # every plugin adds its state
    checkpoint(trainer, state)                      # final checkpoint
    train_end(trainer, outcome)

On ``--resume`` the loop calls ``restore(trainer, state)`` after building every component and
before ``train_start``. ``event(trainer, step, name, message, fields)`` is fired by plugins, not
the loop, whenever something worth logging happens (a hybrid rollback). ``phasetrain_components``
and ``phasetrain_presets`` are asked once, when plugins are loaded, never during a run;
``phasetrain_add_commands`` once per ``phasetrain`` command line, before its arguments are parsed.

Ordering: pluggy calls implementations newest-registered first; ``tryfirst``/``trylast`` move an
implementation to the front or back. Loggers and other pure observers should be ``trylast`` on
``post_step`` and ``eval_end`` so they see the fields that other plugins add to ``metrics``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from argparse import _SubParsersAction
    from collections.abc import Mapping, MutableMapping, Sequence

    from phasetrain.loop import Outcome, Phase, Trainer
    from phasetrain.registry import Component

PROJECT = "phasetrain"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------------------------
# Registration: asked once when plugins are loaded
# ---------------------------------------------------------------------------------------------


@hookspec
def phasetrain_components() -> Sequence[Component]:
    """Return the components this plugin contributes.

    Called once per process when the registry loads plugins, before any config is read. Each
    :class:`phasetrain.registry.Component` names its kind (``"optimizer"``, ``"task"``, ...), its
    name (the value of ``use =`` in a config section), its factory and its attrs config class.
    Two plugins that return the same kind and name are an error that names both distributions.

    :return: a sequence of components (may be empty).
    """


@hookspec
def phasetrain_presets() -> Mapping[str, Any]:
    """Return ready-made configs this plugin ships, as ``{name: path}``.

    Called once when presets are listed or a preset name is resolved. A path is anything
    ``open()``-able or an ``importlib.resources`` traversable pointing at a TOML file, so presets
    can ship as package data and run from an installed wheel. Two plugins offering the same preset
    name are an error.

    :return: a mapping from preset name to TOML file.
    """


# ---------------------------------------------------------------------------------------------
# The command line: asked once per `phasetrain` command, before its arguments are parsed
# ---------------------------------------------------------------------------------------------


@hookspec
def phasetrain_add_commands(subparsers: _SubParsersAction) -> None:
    """Add subcommands to the ``phasetrain`` command line.

    Called once by ``phasetrain`` (and ``python -m phasetrain``) before it parses its arguments,
    with the ``argparse`` sub-parsers object that already holds the built-in commands (``run``,
    ``config``, ``plugins``, ``presets``). Add one parser per command with
    ``subparsers.add_parser(name, help=...)``, declare its arguments, and give it a handler with
    ``parser.set_defaults(handler=function)``: after parsing, the command calls
    ``function(args)`` with the parsed ``argparse.Namespace`` and exits with the integer it
    returns (0 done, 1 failure). Raise :class:`phasetrain.errors.BadInput` for bad input: the
    command prints its message on one line and exits 2. A name that is already taken is a
    :class:`phasetrain.errors.PluginError` naming this plugin. Keep the hook cheap: it runs for
    every command, so import heavy modules inside the handler, not here.

    :return: nothing; the return value is ignored.
    """


# ---------------------------------------------------------------------------------------------
# The run: fired by Trainer.fit in the order shown in the module docstring
# ---------------------------------------------------------------------------------------------


@hookspec
def train_start(trainer: Trainer) -> None:
    """The run is about to take its first step (or its first step after a resume).

    Fires once per ``fit()``, after every component is built and, on resume, after ``restore``.
    ``trainer.step`` is 0 for a fresh run and the resumed step otherwise.
    """


@hookspec
def phase_enter(trainer: Trainer, phase: Phase, previous: Phase | None) -> None:
    """The schedule moved to another phase; fires before the first step of ``phase``.

    ``previous`` is the phase that just ended, or ``None`` at the start of a run (and right after a
    resume). ``trainer.optimizer`` already belongs to ``phase`` when this fires. Precision policies
    cast here, offload strategies move optimizer state out or back, loggers record the switch.
    """


@hookspec
def pre_step(trainer: Trainer, step: int) -> None:
    """A step is about to run. ``step`` counts completed steps so far (0-based index of this one).

    Samplers resample here, monitors take readings. Must be cheap: it fires every step.
    """


@hookspec(firstresult=True)
def run_step(trainer: Trainer, step: int, phase: Phase) -> MutableMapping[str, Any] | None:
    """Perform one training step of ``phase`` and return its metrics.

    Stops at the first non-``None`` result. The kernel's own real step (forward, backward,
    optimizer step, learning-rate schedule) is a ``trylast`` implementation, so a plugin that
    handles some phases differently (for example a predicted step that needs no backward pass)
    returns its metrics for those phases and ``None`` for the rest.

    :return: a mutable mapping with at least ``"loss"`` (a 0-dim tensor or float), or ``None``.
    """


@hookspec
def post_step(trainer: Trainer, step: int, metrics: MutableMapping[str, Any]) -> None:
    """A step finished; ``trainer.step`` is already ``step + 1``.

    ``metrics`` is the mapping ``run_step`` returned. Plugins may add fields to it (the schedule
    adds the phase, a dynamics model its confidence); loggers should be ``trylast`` so they see
    those fields. ``metrics["loss"]`` may be a tensor: call ``float()`` only when you need the
    number, since that can synchronise a device.
    """


@hookspec
def eval_end(trainer: Trainer, step: int, metrics: MutableMapping[str, Any]) -> None:
    """The task was evaluated after step ``step`` (every ``run.eval_every`` steps and at the end).

    ``metrics`` holds the evaluation results (``"eval_loss"`` and any task-specific ones such as
    ``"rel_l2"``); implementations may add to it. Loggers should be ``trylast``.
    """


@hookspec
def event(trainer: Trainer, step: int, name: str, message: str, fields: Mapping[str, Any]) -> None:
    """Something happened that belongs in the logs as it happens: a plugin fires it.

    ``name`` is a short identifier (the hybrid schedule fires ``"rollback"`` and ``"return"``),
    ``message`` one line for people, ``fields`` numbers and strings for files. The built-in
    observers print the message and record ``{"kind": "event", "name": ..., **fields}`` in
    metrics.jsonl and TensorBoard's text tab. Fire it with
    ``trainer.pm.hook.event(trainer=trainer, step=trainer.state.step, name=..., message=..., fields=...)``.
    """


@hookspec
def checkpoint(trainer: Trainer, state: MutableMapping[str, Any]) -> None:
    """A checkpoint is being written; add your state under a key of your own.

    Values must be plain containers (dict, list, tuple) of tensors, numbers, strings, booleans
    and ``None``: checkpoints are loaded without unpickling arbitrary objects. The kernel has
    already stored the model, optimizers, learning-rate schedules, RNGs and counters.
    """


@hookspec
def restore(trainer: Trainer, state: Mapping[str, Any]) -> None:
    """The run resumes from ``state``; read back what you stored in ``checkpoint``.

    Fires after every component is built and the kernel has restored the model, optimizers, RNGs
    and counters, and before ``train_start``.
    """


@hookspec
def train_end(trainer: Trainer, outcome: Outcome) -> None:
    """The run ended. ``outcome.status`` is ``"completed"``, ``"interrupted"`` or ``"failed"``.

    Fires once per ``fit()``, after the final checkpoint, also when training failed (then
    ``outcome.error`` says why). Loggers flush and close here and print their summary.
    """
