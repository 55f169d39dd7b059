"""The hook contract between the phasetrain kernel and its plugins.

Every hook is one function below whose body is only its docstring: when the hook fires, its
arguments, what a return value means and how implementations are ordered. An implementation may
accept any subset of a hook's arguments (pluggy passes only the names it asks for), so arguments
can be added later without breaking plugins. ``docs/hooks.md`` is generated from this file
(``python -m phasetrain.plugins.docgen``) and a test keeps the two in step.

The whole protocol of one run, in order (``Trainer.fit``)::

    # built: strategy; run_dir(trainer, config, resume) chooses trainer.out_dir; then every
    # configured component (each hears the hooks it implements), every phase's optimizer and
    # learning-rate schedule
    restore(trainer, state)                          # only on --resume
    train_start(trainer)
    while trainer.step < run.steps and no stop was requested:
        phase = schedule.phase(trainer)
        if phase changed:
            phase_enter(trainer, phase, previous)
        pre_step(trainer, step)
        batches = task.batch(...) x run.grad_accum_steps     # none when not phase.real
        metrics = run_step(trainer, step, phase, batches)      # first non-None result wins
            # the kernel's real step, for every micro-batch: forward, backward; then
            after_backward(trainer, step, optimizer, micro_batches)  # gradients ready
            # then the optimizer step (a closure optimizer may repeat the above)
        # the loop: data position += len(batches); the phase's lr schedule steps if phase.real
        post_step(trainer, step, metrics)
        # the loop applies requests: a rollback (load_state -> restore) or a stop
        if run.eval_every divides the step:   evaluate()
        if run.checkpoint_every divides it:   save()
    evaluate()   # unless this step was just evaluated (also after a stop)
    save()       # unless this step was just saved (also after a stop)
    train_end(trainer, outcome)

    evaluate():  eval_start(trainer, step); task.evaluate(model); eval_end(trainer, step, metrics)
    save():      checkpoint(trainer, state["plugins"]); save_start(trainer, step, state);
                 <state written atomically>; save_end(trainer, step, path)

If an exception ends the run, ``train_error(trainer, step, error)`` fires before ``train_end``.
``event(trainer, step, name, message, fields)`` is fired by plugins, not the loop.
``phasetrain_kinds``, ``phasetrain_components`` and ``phasetrain_presets`` are asked once,
when plugins are loaded; ``phasetrain_add_commands`` once per ``phasetrain`` command line;
``phasetrain_api`` and ``phasetrain_named_checkpoint`` when a program asks for a plugin's function
or a named checkpoint.

Hooks observe and return values or requests (``trainer.request_stop()``,
``trainer.request_rollback(state)``); the loop applies them between steps, so no hook sees
training state change under it in the middle of a dispatch.

Ordering: pluggy calls implementations newest-registered first; ``tryfirst``/``trylast`` move an
implementation to the front or back. Loggers should be ``trylast`` on ``post_step`` and
``eval_end`` so they see the fields that other plugins add to ``metrics``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from argparse import _SubParsersAction
    from collections.abc import Mapping, MutableMapping, Sequence
    from pathlib import Path

    from phasetrain.config import Config
    from phasetrain.loop import Trainer
    from phasetrain.registry import Component, Kind
    from phasetrain.types import Outcome, Phase

PROJECT = "phasetrain"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------------------------
# Registration: asked once when plugins are loaded
# ---------------------------------------------------------------------------------------------


@hookspec
def phasetrain_kinds() -> Sequence[Kind]:
    """Return the kinds of component this plugin declares.

    Called once per process when plugins are loaded, before ``phasetrain_components`` of any
    plugin. A :class:`phasetrain.registry.Kind` names a config section (``[pruner]``), says what
    its components are (``summary``, and the ``typing.Protocol`` they follow), whether a config
    must choose one, whether it holds a table of them (``many``, like ``[observers.*]``) and
    where the conformance kit finds its contracts. A component marked ``default`` is used when a
    config leaves the section out; otherwise the section is absent and the run has none.
    Declaring a kind that exists already makes this plugin broken, naming both.

    :return: a sequence of kinds (may be empty).
    """


@hookspec
def phasetrain_components() -> Sequence[Component]:
    """Return the components this plugin contributes.

    Called once per process when plugins are loaded, after every plugin's ``phasetrain_kinds``.
    Each :class:`phasetrain.registry.Component` names its kind, its name (the value of ``use =``
    in a config section), its factory, its attrs config class, and whether it is its kind's
    default. Two plugins that return the same kind and name are reported naming both
    distributions, and neither is used.

    :return: a sequence of components (may be empty).
    """


@hookspec
def phasetrain_presets() -> Mapping[str, Any]:
    """Return ready-made configs this plugin ships, as ``{name: path}``.

    Called once when plugins are loaded. A path is anything ``open()``-able or an
    ``importlib.resources`` traversable pointing at a TOML file, so presets can ship as package
    data and run from an installed wheel. A name offered twice keeps the first, with a warning.

    :return: a mapping from preset name to TOML file.
    """


@hookspec
def phasetrain_api() -> Mapping[str, Any]:
    """Return functions this plugin adds to the ``phasetrain`` namespace, as ``{name: function}``.

    Asked when a program reads a name that ``phasetrain`` itself does not define
    (``phasetrain.fit`` comes from the ``supervised`` plugin this way), so a plugin can offer a
    Python API without the kernel importing it. Names starting with ``_`` are never looked up.
    When two plugins offer a name, the first answer in pluggy's order wins.

    :return: a mapping from name to function (may be empty).
    """


@hookspec(firstresult=True)
def phasetrain_named_checkpoint(run_dir: Path, which: str) -> Path | None:
    """Return the checkpoint a run directory keeps under the name ``which`` (such as ``"best"``).

    Asked by ``phasetrain.load_model(run_dir, which=...)`` and ``load_checkpoint`` for any
    ``which`` other than ``"last"`` (the newest good checkpoint, which the ``[store]`` finds).
    Stops at the first non-``None`` result: a plugin that keeps checkpoints of its own answers
    for its names and returns ``None`` for the rest.

    :return: the path of a checkpoint the run's ``[store]`` can read, or ``None``.
    """


# ---------------------------------------------------------------------------------------------
# The command line: asked once per `phasetrain` command, before its arguments are parsed
# ---------------------------------------------------------------------------------------------


@hookspec
def phasetrain_add_commands(subparsers: _SubParsersAction) -> None:
    """Add subcommands to the ``phasetrain`` command line.

    Called once by ``phasetrain`` (and ``python -m phasetrain``) before it parses its arguments,
    with the ``argparse`` sub-parsers object that holds the kernel's commands (``run``,
    ``config``). Add one parser per command with ``subparsers.add_parser(name, help=...)``,
    declare its arguments, and give it a handler with ``parser.set_defaults(handler=function)``:
    the command calls ``function(args)`` and exits with the integer it returns (0 done, 1
    failure). Raise :class:`phasetrain.errors.BadInput` for bad input: the command prints its
    message on one line and exits 2. A name that is already taken is a
    :class:`phasetrain.errors.PluginError` naming this plugin. Keep the hook cheap: import heavy
    modules inside the handler.

    :return: nothing; the return value is ignored.
    """


# ---------------------------------------------------------------------------------------------
# The run's directory: asked once when a Trainer is built
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def run_dir(trainer: Trainer, config: Config, resume: bool | str) -> Path | str | None:
    """Choose the directory the run being built writes to: ``trainer.out_dir``.

    Stops at the first non-``None`` result; with none, the run writes to ``config.run.out_dir``
    as it is. Asked once per ``Trainer``, after the strategy is built (so an implementation can
    agree on one directory across processes with ``trainer.strategy``) and before every other
    component, whose ``ctx.out_dir`` is the answer. ``resume`` is ``False`` for a fresh run,
    ``True`` to continue the latest run of this config and a string to continue the run it names
    (``phasetrain run CONFIG --resume [RUN]``). A Trainer built only to read a run back
    (``load_model``) is given its directory and does not ask. The built-in ``rundir`` plugin
    (``trylast``) gives each fresh run a new ``version_N`` directory when ``run.out_dir`` ends in
    ``{version}``, and locks the directory while the run trains.

    :return: the run directory, or ``None`` to leave the choice to the next implementation.
    """


# ---------------------------------------------------------------------------------------------
# The run: fired by Trainer.fit in the order shown in the module docstring
# ---------------------------------------------------------------------------------------------


@hookspec
def train_start(trainer: Trainer) -> None:
    """The run is about to take its first step (or its first step after a resume).

    Fires once per ``fit()``, after every component and every phase's optimizer is built and, on
    resume, after ``restore``. ``trainer.step`` is 0 for a fresh run and the resumed step
    otherwise. Raise :class:`phasetrain.errors.BadInput` here to refuse a combination of
    components before anything trains.
    """


@hookspec
def phase_enter(trainer: Trainer, phase: Phase, previous: Phase | None) -> None:
    """The schedule moved to another phase; fires before the first step of ``phase``.

    ``previous`` is the phase that just ended, or ``None`` at the start of a run (and right
    after a resume). ``trainer.optimizer`` already belongs to ``phase`` when this fires.
    Precision policies switch here, offload strategies move optimizer state, loggers record it.
    """


@hookspec
def pre_step(trainer: Trainer, step: int) -> None:
    """A step is about to run. ``step`` counts completed steps (the 0-based index of this one).

    Fires before the step's batches are fetched, so a plugin that changes the training data
    (new collocation points, a curriculum) does it here. Must be cheap: it fires every step.
    """


@hookspec(firstresult=True)
def run_step(trainer: Trainer, step: int, phase: Phase, batches: Sequence[Any]) -> MutableMapping[str, Any] | None:
    """Perform one step of ``phase`` on ``batches`` and return its metrics.

    Stops at the first non-``None`` result. ``batches`` holds the step's
    ``run.grad_accum_steps`` micro-batches, already split for this process (empty when
    ``phase.real`` is False). The kernel's real step (forward and backward per micro-batch,
    ``after_backward``, the optimizer step) is a ``trylast`` implementation, so a plugin that
    handles some phases differently returns its metrics for those phases and ``None`` for the
    rest. An implementation computes; it does not advance the data position or step the
    learning-rate schedule: the loop does both.

    :return: a mutable mapping with at least ``"loss"`` (a 0-dim tensor or float), or ``None``.
    """


@hookspec
def after_backward(trainer: Trainer, step: int, optimizer: Any, micro_batches: int, loss: Any) -> None:
    """Gradients are ready: backward ran for all ``micro_batches`` of the step (whose summed
    loss is ``loss``, detached) and the optimizer has not used them yet.

    Fires from the real step each time its closure is evaluated (once per step for ordinary
    optimizers; a closure optimizer such as L-BFGS may evaluate it several times). Gradients are
    unscaled (a loss-scaling precision policy divides them back first). Modify ``p.grad`` in place
    to clip or add noise; record what you measured and add it to the metrics in ``post_step``. To
    abandon the step without an optimizer update, call ``trainer.request_skip_step()`` (the
    ``[nonfinite]`` policies do, for a loss or gradient that is not finite; they are
    ``tryfirst``): the step then reports ``skipped = 1``.
    """


@hookspec
def post_step(trainer: Trainer, step: int, metrics: MutableMapping[str, Any]) -> None:
    """A step finished; ``trainer.step`` is already ``step + 1``.

    ``metrics`` is the mapping ``run_step`` returned; plugins may add fields to it, and loggers
    should be ``trylast`` so they see them. ``metrics["loss"]`` may be a tensor: call ``float()``
    only when you need the number, since that can synchronise a device. To roll the run back or
    stop it, call ``trainer.request_rollback(state)`` or ``trainer.request_stop()``: the loop
    applies the request after every implementation has run.
    """


@hookspec
def eval_start(trainer: Trainer, step: int) -> None:
    """The task is about to be evaluated after step ``step``.

    Fires on every process. A plugin that evaluates other weights than the trained ones (an
    exponential moving average, Schedule-Free's averaged point) swaps them in here and back in
    ``eval_end``.
    """


@hookspec
def eval_end(trainer: Trainer, step: int, metrics: MutableMapping[str, Any]) -> None:
    """The task was evaluated after step ``step`` (every ``run.eval_every`` steps and at the end).

    ``metrics`` holds the evaluation results (``"eval_loss"`` and any task-specific ones; empty
    for a task that does not evaluate); implementations may add to it. Loggers should be
    ``trylast``; a plugin that swapped weights in ``eval_start`` swaps them back here.
    """


@hookspec
def event(trainer: Trainer, step: int, name: str, message: str, fields: Mapping[str, Any]) -> None:
    """Something happened that belongs in the logs as it happens: a plugin fires it.

    ``name`` is a short identifier (``"rollback"``), ``message`` one line for people, ``fields``
    numbers and strings for files. The built-in observers print the message and record
    ``{"kind": "event", "name": ..., **fields}``. Fire it with
    ``trainer.pm.hook.event(trainer=trainer, step=trainer.step, name=..., message=..., fields=...)``.
    """


@hookspec
def checkpoint(trainer: Trainer, state: MutableMapping[str, Any]) -> None:
    """A checkpoint is being written; add your state under a key of your own.

    Values must be plain containers (dict, list, tuple) of tensors, numbers, strings, booleans
    and ``None``: checkpoints are loaded without unpickling arbitrary objects, and anything else
    is refused here, naming your key. The kernel stores the model, optimizers, learning-rate
    schedules, RNGs and counters itself. Also asked for an in-memory ``trainer.state_dict()``.
    """


@hookspec
def save_start(trainer: Trainer, step: int, state: MutableMapping[str, Any]) -> None:
    """A checkpoint of step ``step`` is about to be written; ``state`` is all of it.

    ``state`` has ``"model"``, ``"optimizers"``, ``"lr_schedulers"``, ``"rng"``, ``"trainer"``
    and ``"plugins"``; what this mapping holds after the hook is what is written. A plugin that
    keeps other weights for use (an average) may put them under ``"model"`` (which is what
    ``load_model`` returns) and keep the trained ones under its own key in ``"plugins"`` to put
    them back in ``restore``. Fires on every process.
    """


@hookspec
def save_end(trainer: Trainer, step: int, path: Path) -> None:
    """The checkpoint of step ``step`` is complete on disk at ``path``.

    Fires on every process once the checkpoint is in place (older ones may have been pruned).
    Trackers upload it here; a plugin keeping its own selection of checkpoints records it.
    """


@hookspec
def restore(trainer: Trainer, state: Mapping[str, Any]) -> None:
    """The run continues from ``state``; read back what you stored in ``checkpoint``.

    ``state`` is the ``"plugins"`` part of a checkpoint. Fires on ``--resume`` before
    ``train_start``, and mid-run when the loop applies a rollback (between two steps, never
    inside another hook). The kernel has already loaded the model, optimizers, learning-rate
    schedules, RNGs and counters.
    """


@hookspec
def train_error(trainer: Trainer, step: int, error: BaseException) -> None:
    """An exception is ending the run at step ``step``; fires before ``train_end``.

    The loop re-raises ``error`` afterwards (a Ctrl-C, or a failure named after the plugin that
    raised it). Trackers mark the run failed here; a plugin may write diagnostics. An exception
    raised here is reported and does not replace ``error``.
    """


@hookspec
def train_end(trainer: Trainer, outcome: Outcome) -> None:
    """The run ended. ``outcome.status`` is ``"completed"``, ``"stopped"`` (a plugin ended it early as
    planned: early stopping), ``"interrupted"`` (a signal or another stop request) or ``"failed"``.

    Fires once per ``fit()``, after the final checkpoint, also when training failed (then
    ``outcome.error`` says why). Loggers flush and close here and print their summary.
    """
