"""What `phasetrain sweep` costs and what its pruning saves, on a learning-rate sweep of `regression`.

Three ways to run the same trials (a random sampler with a fixed seed draws the same learning
rates whatever the results, so every way trains the same configs):

- by hand: one ``phasetrain run`` process per trial, one after the other (a shell loop);
- sweep: ``phasetrain sweep --pruner none --jobs 1`` (Optuna, SQLite study, trials as processes);
- pruned: ``phasetrain sweep --pruner median --jobs 1`` (trials stopped by the median pruner).

Targets: sweep / by hand wall time <= 1.05 (the cost of Optuna and its study); pruning saves
>= 30 % of the steps at an equal best result. The ways are interleaved over ``--repeats``
rounds (their order rotates) and the time ratio is the median of the rounds' paired ratios.

    python benchmarks/sweep.py              # 20 trials of 300 steps, 3 rounds
    python benchmarks/sweep.py --quick      # 8 trials of 150 steps, 1 round
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def base_sets(steps: int) -> list[str]:
    return [f"run.steps={steps}", f"run.eval_every={steps // 10}", "run.log_every=50", "run.threads=1",
            "observers.console.quiet=true", "lr_schedule={use='constant'}"]


def sweep(work: Path, name: str, trials: int, steps: int, pruner: str) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "phasetrain", "sweep", "regression", "--dir", str(work / name),
           "--param", "optimizer.lr=loguniform(1e-4, 3e-1)", "--trials", str(trials), "--jobs", "1",
           "--sampler", "random", "--seed", "0", "--pruner", pruner,
           *[a for s in base_sets(steps) for a in ("--set", s)]]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    import optuna

    study = optuna.load_study(study_name="phasetrain", storage=f"sqlite:///{work / name / 'study.db'}")
    rows = [{"lr": t.params["optimizer.lr"], "state": t.state.name, "steps": t.user_attrs.get("steps"),
             "value": t.value} for t in study.get_trials(deepcopy=False)]
    return seconds, {"trials": rows}


def drawn(trials: int) -> list[float]:
    """The learning rates the sweeps' random sampler (seed 0) draws, in order."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return [study.ask().suggest_float("optimizer.lr", 1e-4, 3e-1, log=True) for _ in range(trials)]


def by_hand(work: Path, lrs: list[float], steps: int) -> float:
    start = time.perf_counter()
    for index, lr in enumerate(lrs):
        cmd = [sys.executable, "-m", "phasetrain", "run", "regression", "--set", f"optimizer.lr={lr!r}",
               "--set", f"run.out_dir='{work / 'hand' / f'trial_{index}'}'", *[a for s in base_sets(steps) for a in ("--set", s)]]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="8 trials of 150 steps, 1 round")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sweep.json"))
    args = parser.parse_args()
    if args.quick:
        args.trials, args.steps, args.repeats = 8, 150, 1
    rounds = []
    for repeat in range(args.repeats):
        work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
        try:
            times: dict[str, float] = {}
            results: dict[str, dict] = {}
            ways = ["sweep", "hand", "pruned"]
            ways = ways[repeat % 3:] + ways[:repeat % 3]  # rotate the order between rounds
            for way in ways:
                if way == "hand":
                    times[way] = by_hand(work, drawn(args.trials), args.steps)
                else:
                    times[way], results[way] = sweep(work, way, args.trials, args.steps,
                                                     "none" if way == "sweep" else "median")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        full, pruned = results["sweep"]["trials"], results["pruned"]["trials"]
        for trials in (full, pruned):
            assert [t["lr"] for t in trials] == drawn(args.trials), "the sampler drew other learning rates"
        steps_full = sum(t["steps"] or 0 for t in full)
        steps_pruned = sum(t["steps"] or 0 for t in pruned)
        best_full = min(t["value"] for t in full if t["value"] is not None)
        best_pruned = min(t["value"] for t in pruned if t["value"] is not None)
        rounds.append({"seconds": times, "ratio_sweep_to_hand": times["sweep"] / times["hand"],
                       "steps_full": steps_full, "steps_pruned": steps_pruned,
                       "steps_saved": 1 - steps_pruned / steps_full, "pruned_trials": sum(t["state"] == "PRUNED" for t in pruned),
                       "best_full": best_full, "best_pruned": best_pruned, "order": ways})
        print(f"round {repeat + 1}: by hand {times['hand']:.1f} s, sweep {times['sweep']:.1f} s "
              f"({times['sweep'] / times['hand']:.3f}x), pruned sweep {times['pruned']:.1f} s; steps saved "
              f"{1 - steps_pruned / steps_full:.1%}; best {best_full:.4g} vs {best_pruned:.4g}", flush=True)
    ratio = statistics.median(r["ratio_sweep_to_hand"] for r in rounds)
    saved = statistics.median(r["steps_saved"] for r in rounds)
    equal = all(r["best_full"] == r["best_pruned"] for r in rounds)
    print()
    print(f"{'what':<44} {'measured':>10} {'target':>8}")
    print(f"{'sweep / by hand, wall time (median ratio)':<44} {ratio:>9.3f}x {'<= 1.05':>8}")
    print(f"{'steps saved by median pruning':<44} {saved:>10.1%} {'>= 30%':>8}")
    print(f"{'best result equal with and without pruning':<44} {str(equal):>10} {'True':>8}")
    load = os.getloadavg()
    print(f"({args.trials} trials of {args.steps} steps, {args.repeats} round(s); load average {load[0]:.2f})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"trials": args.trials, "steps": args.steps, "repeats": args.repeats,
                                          "ratio_sweep_to_hand": ratio, "steps_saved": saved, "best_equal": equal,
                                          "load_average": load, "rounds": rounds}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
