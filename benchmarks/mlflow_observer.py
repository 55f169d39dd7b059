"""The per-step cost of the MLflow observer (contrib/phasetrain-mlflow) on `regression`.

Runs of `regression` with and without ``[observers.mlflow]`` (a SQLite tracking store in a
temporary directory), in one process, interleaved (the order alternates between repeats). Two
measures of the cost per step, both against the step time without the observer:

- wall: the step time inside the loop (first ``pre_step`` to last ``post_step``, so the
  observer's once-per-run work, creating the MLflow run and the artifacts at the end, is
  reported apart), with over without, as the median of paired ratios. Everything counts,
  MLflow's background sender too, but on a shared machine the noise can exceed the effect;
- in the hooks: the time spent inside the observer's per-step hooks (``post_step``,
  ``eval_end``), which a busy machine inflates no more than the step itself.

Cadences: the default (metrics every ``run.log_every`` = 50 steps) and the worst case (every
step). Target: the per-step cost <= 5 % of a step.

    python benchmarks/mlflow_observer.py            # 3000 steps, 9 repeats
    python benchmarks/mlflow_observer.py --quick    # 1000 steps, 3 repeats

Needs ``pip install -e contrib/phasetrain-mlflow`` (``make install-test`` does it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from phasetrain import Component, hookimpl
from phasetrain.registry import plugin
from phasetrain_mlflow import MlflowObserver, MlflowOptions

ROOT = Path(__file__).resolve().parent.parent


class LoopClock:
    """Seconds from the first pre_step to the last post_step, and around the whole fit."""

    def __init__(self):
        self.first = self.last = None

    @hookimpl(tryfirst=True)
    def pre_step(self):
        if self.first is None:
            self.first = time.perf_counter()

    @hookimpl(trylast=True)
    def post_step(self):
        self.last = time.perf_counter()


class Timed(MlflowObserver):
    """The MLflow observer, timing its own per-step hooks."""

    spent = 0.0

    @hookimpl(trylast=True)
    def post_step(self, trainer, step, metrics):
        start = time.perf_counter()
        super().post_step(trainer, step, metrics)
        Timed.spent += time.perf_counter() - start

    @hookimpl(trylast=True)
    def eval_end(self, step, metrics):
        start = time.perf_counter()
        super().eval_end(step, metrics)
        Timed.spent += time.perf_counter() - start


class TimedComponent:
    @hookimpl
    def phasetrain_components(self):
        return [Component("observer", "mlflow_timed", Timed, MlflowOptions)]


def one_run(work: Path, steps: int, mlflow: bool, every: int, tag: str) -> tuple[float, float, float]:
    """(seconds per step inside the loop, seconds of the whole fit, seconds per step inside the
    observer's hooks) of one run."""
    import phasetrain

    sets = [f"run.out_dir='{work / tag}'", f"run.steps={steps}", "run.threads=1", "run.device='cpu'",
            "observers.console.enabled=false"]
    if mlflow:
        uri = f"sqlite:///{work / 'mlruns.db'}"
        sets.append(f"observers.mlflow_timed={{tracking_uri='{uri}', artifact_location='{work / 'artifacts'}', "
                    f"every={every}, log_report=false}}")
    clock = LoopClock()
    trainer = phasetrain.Trainer.from_config("regression", sets, plugins=[clock, plugin(TimedComponent(), "timed", "bench")])
    Timed.spent = 0.0
    start = time.perf_counter()
    trainer.fit()
    whole = time.perf_counter() - start
    return (clock.last - clock.first) / (steps - 1), whole, Timed.spent / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="1000 steps, 3 repeats")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mlflow_observer.json"))
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats = 1000, 3
    work = Path(tempfile.mkdtemp(prefix="bench-mlflow-"))
    results = {}
    try:
        one_run(work, 50, True, 0, "warm-up")  # creates the store's tables and imports mlflow once
        for every, label in ((0, "every log_every (50) steps"), (1, "every step")):
            ratios, base, fixed, inside = [], [], [], []
            for repeat in range(args.repeats):
                order = (False, True) if repeat % 2 == 0 else (True, False)
                got = {}
                for on in order:
                    got[on] = one_run(work, args.steps, on, every, f"{every}-{repeat}-{on}")
                ratios.append(got[True][0] / got[False][0])
                inside.append(got[True][2] / got[False][0])
                base.append(got[False][0])
                fixed.append((got[True][1] - got[True][0] * args.steps) - (got[False][1] - got[False][0] * args.steps))
            results[label] = {"ratios": ratios, "median_ratio": statistics.median(ratios),
                              "in_hooks": inside, "median_in_hooks": statistics.median(inside),
                              "step_seconds_without": statistics.median(base),
                              "per_run_seconds": statistics.median(fixed)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'metrics sent':<28} {'step without':>13} {'cost: wall':>11} {'in hooks':>9} {'per run':>9}"
          "  (target <= 5 % of a step)")
    for label, r in results.items():
        print(f"{label:<28} {r['step_seconds_without'] * 1e3:>10.3f} ms {r['median_ratio'] - 1:>+10.1%} "
              f"{r['median_in_hooks']:>9.2%} {r['per_run_seconds']:>7.2f} s")
    load = os.getloadavg()
    print(f"({args.steps} steps, median of {args.repeats} interleaved pairs; load average {load[0]:.2f})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"steps": args.steps, "repeats": args.repeats, "load_average": load,
                                          "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
