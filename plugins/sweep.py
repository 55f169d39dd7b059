"""``phasetrain sweep CONFIG``: hyperparameter search with Optuna, each trial a normal run.

::

    phasetrain sweep regression --param 'optimizer.lr=loguniform(1e-4, 1e-1)' --trials 20 --jobs 2
    phasetrain sweep regression --space space.toml          # the same, from a file

The search space is a set of ``key=distribution`` pairs (``uniform(a, b)``, ``loguniform(a, b)``,
``int(a, b)``, ``logint(a, b)``, ``choice(x, y, ...)``; values are read as TOML), from
``--param`` or the ``[params]`` table of a ``--space`` TOML file, which may also hold the other
settings (``trials``, ``jobs``, ``metric``, ``direction``, ``pruner``, ``sampler``, ``seed``).

The study lives in SQLite (``<dir>/study.db``) beside the trials' run directories
(``<dir>/trial_N``), so running the same command again continues the sweep: finished trials are
kept, trials a killed sweep left running are run again with the same parameters. Each trial is a
``phasetrain run`` process (``--jobs N`` runs N at once); its ``[observers.optuna]`` reports the
trial's evaluation metric to the study after every evaluation and stops the run when the pruner
(``median`` or ``hyperband``) says so. At the end: a table of the trials, and the best trial's
config in ``<dir>/best.toml`` (``phasetrain run <dir>/best.toml`` trains it).

Optuna is an optional dependency: ``pip install 'phasetrain[sweep]'``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from phasetrain import Component, hookimpl
from phasetrain.errors import BadInput, ConfigError
from phasetrain.plugins.sweep_space import (SweepSettings, require_optuna, as_override, parse_distribution, read_space,
                                            settings_from, suggest)
from phasetrain.plugins.sweep_trial import (STUDY_NAME, OptunaOptions, TrialReporter, final_value, make_pruner,
                                            open_storage)

__all__ = ["STUDY_NAME", "Sweep", "SweepSettings", "parse_distribution"]

STUDY = "study.db"
SPEC = "sweep.json"
BEST = "best.toml"


# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------


class Sweep:
    """One sweep directory: its spec, study, trials and the lock that keeps it to one process."""

    def __init__(self, config: str, overrides: Sequence[str], params: Mapping[str, Any], settings: SweepSettings,
                 directory: Path, quiet: bool = False, metrics_file: str = "metrics.jsonl"):
        self.config, self.overrides, self.params = config, list(overrides), dict(params)
        self.metrics_file = metrics_file  # the jsonl observer's, in each trial's run directory
        self.settings, self.dir, self.quiet = settings, directory, quiet
        self.storage = f"sqlite:///{(directory / STUDY).resolve()}"

    def spec(self) -> dict[str, Any]:
        s = self.settings
        return {"config": self.config, "overrides": self.overrides,
                "params": {k: repr(v) for k, v in self.params.items()},
                "metric": s.metric, "direction": s.direction, "pruner": s.pruner, "sampler": s.sampler, "seed": s.seed}

    def check_spec(self) -> None:
        """A sweep directory holds one sweep: continuing with another space or goal is refused."""
        path = self.dir / SPEC
        mine = self.spec()
        if path.exists():
            saved = json.loads(path.read_text())
            if differing := sorted(k for k in mine if saved.get(k) != mine[k]):
                raise BadInput(f"{self.dir} holds another sweep (it differs in {', '.join(differing)}); "
                               "choose another --dir, or repeat the same command to continue it")
        else:
            path.write_text(json.dumps(mine, indent=2) + "\n")

    def study(self) -> Any:
        optuna = require_optuna()
        s = self.settings
        study = optuna.create_study(storage=open_storage(self.storage), study_name=STUDY_NAME, direction=s.direction,
                                    pruner=make_pruner(s.pruner), load_if_exists=True)
        # A resumed sweep seeds its sampler past the trials it has, or it would draw them again.
        seed = s.seed + len(study.get_trials(deepcopy=False))
        study.sampler = (optuna.samplers.TPESampler(seed=seed) if s.sampler == "tpe"
                         else optuna.samplers.RandomSampler(seed=seed))
        return study

    def recover(self, study: Any) -> int:
        """Trials a killed sweep left running (or that were interrupted) fail and go back into
        the queue with their parameters; return how many trials are finished."""
        from optuna.trial import TrialState

        storage = study._storage
        trials = study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get("retry_of") for t in trials}
        finished = 0
        for trial in trials:
            stale = trial.state == TrialState.RUNNING  # its process is gone: we hold the sweep's lock
            interrupted = trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted")
            if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) and not interrupted:
                finished += 1
            elif (stale or interrupted) and trial.number not in retried:
                if stale:
                    storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
                    storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
                study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        return finished

    def command(self, trial: Any, overrides: Sequence[str]) -> list[str]:
        sets = [*self.overrides, *overrides, f"run.out_dir={json.dumps(str(self.dir / f'trial_{trial.number}'))}"]
        if self.settings.pruner != "none":  # the trial reports to the study (and imports Optuna) only to be pruned
            reporter = {"storage": self.storage, "trial": trial._trial_id, "metric": self.settings.metric,
                        "pruner": self.settings.pruner}
            sets.append(f"observers.optuna={_inline(reporter)}")
        return [sys.executable, "-m", "phasetrain", "run", self.config, *[a for s in sets for a in ("--set", s)]]

    def result(self, trial: Any) -> tuple[Any, float | None]:
        """Run ``trial`` as a ``phasetrain run`` process and say how it ended: (state, value)."""
        from optuna.trial import TrialState

        values = {key: suggest(trial, key, dist) for key, dist in self.params.items()}
        overrides = [as_override(k, json.loads(v) if isinstance(v, str) and v[:1] in "[{" else v)
                     for k, v in values.items()]
        started = time.perf_counter()
        log = self.dir / f"trial_{trial.number}.log"
        with open(log, "w") as out:
            code = subprocess.call(self.command(trial, overrides), stdout=out, stderr=subprocess.STDOUT)
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 3))
        if code != 0:
            last = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
            self.say(f"trial {trial.number} failed (exit {code}): {last[0]}")
            return TrialState.FAIL, None
        value, steps, status = final_value(self.dir / f"trial_{trial.number}" / self.metrics_file, self.settings.metric)
        trial.set_user_attr("steps", steps)
        pruned = trial.storage.get_trial_user_attrs(trial._trial_id).get("pruned_at")  # the run's, not a cached copy
        if pruned is not None:
            self.say(f"trial {trial.number} pruned at step {pruned}: {_params(values)}")
            return TrialState.PRUNED, None
        if status == "interrupted":  # stopped from outside (Ctrl-C, SIGTERM): run it again on resume
            trial.set_user_attr("interrupted", True)
            self.say(f"trial {trial.number} interrupted at step {steps}")
            return TrialState.FAIL, None
        if value is None:
            self.say(f"trial {trial.number} failed: its run logged no {self.settings.metric}")
            return TrialState.FAIL, None
        trial.set_user_attr("value", value)
        self.say(f"trial {trial.number}: {self.settings.metric} {value:.4g} with {_params(values)}")
        return TrialState.COMPLETE, value

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)

    def run(self) -> Any:
        optuna = require_optuna()
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own line per trial instead
        study = self.study()
        finished = self.recover(study)
        todo = max(0, self.settings.trials - finished)
        self.say(f"phasetrain sweep: {finished} of {self.settings.trials} trials done; running {todo} "
                 f"({self.settings.jobs} at a time) in {self.dir}")
        if todo:
            self.work(study, todo)
        return study

    def work(self, study: Any, todo: int) -> None:
        """Run ``todo`` trials, ``jobs`` at a time, with Optuna's ask and tell. We keep the threads
        rather than ``study.optimize(n_jobs=...)``, which can hand one enqueued trial (a retry) to
        two threads asking at once: asking is serialised here."""
        from optuna.trial import TrialState

        lock, stop, errors, launched = threading.Lock(), threading.Event(), [], [0]

        def worker() -> None:
            while not stop.is_set():
                with lock:
                    if launched[0] >= todo:
                        return
                    launched[0] += 1
                    trial = study.ask()
                try:
                    state, value = self.result(trial)
                except BaseException as exc:  # a bug or the store: end the sweep, keep what is done
                    study.tell(trial, state=TrialState.FAIL)
                    errors.append(exc)
                    stop.set()
                    return
                study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(self.settings.jobs, todo))]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                thread.join()
        except KeyboardInterrupt:  # the trials got the signal too: they checkpoint, and are run again on resume
            stop.set()
            for thread in threads:
                thread.join()
            raise
        if errors:
            raise errors[0]


def _inline(table: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in table.items()) + "}"


def _params(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


# ---------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------


def trial_rows(study: Any, metric: str) -> list[list[str]]:
    """The table of trials: number, state, value, steps, time, then one column per parameter."""
    trials = study.get_trials(deepcopy=False)
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    rows = [["trial", "state", metric, "steps", "time", *keys]]
    for t in trials:
        value = t.value if t.value is not None else t.user_attrs.get("value")
        rows.append([str(t.number), t.state.name.lower(), "-" if value is None else f"{value:.4g}",
                     str(t.user_attrs.get("steps", "-")), f"{t.user_attrs['seconds']:.1f} s" if "seconds" in t.user_attrs else "-",
                     *(_cell(t.params.get(k)) for k in keys)])
    return rows


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def best_config(sweep: Sweep, study: Any) -> str | None:
    """The best trial's config as TOML (what ``phasetrain config`` prints), or None."""
    from optuna.trial import TrialState

    from phasetrain import config as config_mod

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    best = study.best_trial
    overrides = [as_override(k, json.loads(v) if isinstance(v, str) and v[:1] in "[{" else v)
                 for k, v in best.params.items()]
    config = config_mod.load(sweep.config, [*sweep.overrides, *overrides])
    header = (f"# best of sweep {sweep.dir}: trial {best.number}, {sweep.settings.metric} {best.value:.6g}\n"
              f"# {', '.join(overrides)}\n")
    return header + config_mod.to_toml(config)


def cmd_sweep(args: argparse.Namespace) -> int:
    from phasetrain import config as config_mod
    from phasetrain.plugins.report import print_table
    from phasetrain.plugins.rundir import LOCK_FILE, Lock

    require_optuna()
    file_settings, params = read_space(args.space)
    settings = settings_from(args, file_settings, args.space or "phasetrain sweep")
    sources = dict.fromkeys(params, args.space)
    for text in args.params:
        key, _, dist = text.partition("=")
        if not key.strip() or not dist:
            raise ConfigError("--param", text, "expected key=distribution, e.g. optimizer.lr=loguniform(1e-4,1e-1)")
        params[key.strip()], sources[key.strip()] = dist, "--param"
    if not params:
        raise BadInput("phasetrain sweep: nothing to search: give --param key=distribution(...) or a --space file")
    space = {k: parse_distribution(k, v, sources[k]) for k, v in params.items()}
    config = config_mod.load(args.config, args.overrides)  # a bad base config fails here, once
    jsonl = config.sections.get("observers", {}).get("jsonl")
    if jsonl is None or not jsonl.enabled:
        raise ConfigError(config.source, "observers.jsonl", "is off: a sweep reads each trial's result from its "
                                                            "metrics file")
    if settings.pruner != "none" and not config.run.eval_every:
        raise ConfigError(config.source, "run.eval_every", f"is 0: the {settings.pruner} pruner needs evaluations "
                                                            "during the run (--set run.eval_every=N, or --pruner none)")
    name = Path(args.config).stem if Path(args.config).suffix else args.config
    directory = Path(args.dir or f"sweeps/{name}")
    directory.mkdir(parents=True, exist_ok=True)
    lock = Lock(directory / LOCK_FILE)
    lock.acquire("sweep")
    try:
        sweep = Sweep(args.config, args.overrides, space, settings, directory, metrics_file=jsonl.options.file)
        sweep.check_spec()
        study = sweep.run()
    finally:
        lock.release()
    print()
    print_table(trial_rows(study, settings.metric), sys.stdout)
    best = best_config(sweep, study)
    if best is None:
        print("no trial completed")
        return 1
    (directory / BEST).write_text(best)
    print(f"\nbest: trial {study.best_trial.number}, {settings.metric} {study.best_value:.6g}; "
          f"its config is {directory / BEST} (phasetrain run {directory / BEST}):\n")
    print(best, end="")
    return 0


@hookimpl
def phasetrain_add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser("sweep", help="search hyperparameters with Optuna; each trial is a run",
                              description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("config", metavar="PRESET_OR_FILE")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the base config (repeatable)")
    p.add_argument("--param", dest="params", action="append", default=[], metavar="KEY=DIST",
                   help="a searched key: uniform(a,b), loguniform(a,b), int(a,b), logint(a,b), choice(x,y,...)")
    p.add_argument("--space", metavar="FILE", help="a TOML file with [params] and settings")
    p.add_argument("--dir", metavar="DIR", help="the sweep's directory (default: sweeps/<config name>)")
    p.add_argument("--trials", type=int, help="trials in all, counting those already done (default 20)")
    p.add_argument("--jobs", type=int, help="trials at once, each in its own process (default 1)")
    p.add_argument("--metric", help="the evaluation metric to optimise (default eval_loss)")
    p.add_argument("--direction", help="minimize (default) or maximize")
    p.add_argument("--pruner", help="median (default), hyperband or none")
    p.add_argument("--sampler", help="tpe (default) or random")
    p.add_argument("--seed", type=int, help="the sampler's seed (default 0)")
    p.set_defaults(handler=cmd_sweep)


@hookimpl
def phasetrain_components() -> list[Component]:
    return [Component("observer", "optuna", TrialReporter, OptunaOptions,
                      "a sweep trial's link to its Optuna study: reports evaluations, stops when pruned")]
