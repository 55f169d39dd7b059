"""Hybrid predictive training vs plain training: wall-clock time to the same loss.

For each task, plain training (`single`), `hybrid` + `linear` and `hybrid` + `rssm` run with the
same optimizer, learning rate and hyper-parameters, for several seeds, interleaved in one
process. The target of a seed is the held-out eval loss that plain training reaches at its
final step. For every run we record, at each evaluation, the training time so far (evaluation
time excluded) and report the first time the eval loss is at or below the target.

Equal budgets: every variant gets the same number of *real* (gradient) steps, N. Predicted steps
come on top: a hybrid run may take up to ``--hybrid-steps`` x N steps in all and stops when its
real steps reach N. The learning rate is constant (after the task's warm-up) in every variant,
so that it does not depend on the total step count, which differs between the variants.

Reported per task and variant: median time to target and steps to target, speed-up (plain time
/ hybrid time, median over seeds), final eval loss, fraction of predicted steps, rollbacks, and
the median cost of a predicted step relative to a real one.

    python benchmarks/hybrid.py --threads 1     # default size, 3 seeds: about 6 minutes
    python benchmarks/hybrid.py --full          # longer runs
    python benchmarks/hybrid.py --tasks regression --seeds 3
    python benchmarks/hybrid.py --tasks burgers --set schedule.loss_check_every=4
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import time
from pathlib import Path

import torch

import phasetrain
from phasetrain import hookimpl
from phasetrain.registry import load_registry

# Per task: the preset and the overrides that make the default-size benchmark fit its budget.
TASKS = {
    "regression": ("regression", ["run.steps=600", "run.eval_every=25", "lr_schedule={use='constant'}"],
                   ["run.steps=3000", "run.eval_every=50"]),
    "lm": ("lm", ["run.steps=200", "run.eval_every=20", "task.eval_batches=4",
                  "lr_schedule={use='constant', warmup_steps=20}"],
           ["run.steps=1500", "run.eval_every=50"]),
    # The Adam stage of the burgers preset on 2,000 points (L-BFGS is a different optimizer).
    "burgers": ("burgers", ["run.steps=1500", "run.eval_every=50", "sampler.n=2000", "task.eval_grid=[128, 64]",
                            "schedule={use='single'}", "lr_schedule={use='constant'}"],
                ["run.steps=6000", "run.eval_every=100", "sampler.n=10000", "task.eval_grid=[]"]),
}
VARIANTS = {
    "plain": [],
    "hybrid+linear": ["schedule={use='hybrid'}", "dynamics={use='linear'}"],
    "hybrid+rssm": ["schedule={use='hybrid'}", "dynamics={use='rssm'}"],
}


class RealStepCap:
    """Stops a hybrid run once its real (gradient) steps reach the plain run's step count."""

    def __init__(self, real_steps: int) -> None:
        self.real_steps = real_steps

    @hookimpl
    def post_step(self, trainer) -> None:
        if getattr(trainer.schedule, "real_steps", 0) >= self.real_steps:
            trainer.stop_requested = True


class Timeline:
    """Training time (evaluation excluded) at every evaluation, and per-step costs by kind."""

    def __init__(self) -> None:
        self.evals: list[tuple[int, float, float]] = []  # (step, training seconds, eval loss)
        self.step_times: dict[str, list[float]] = {"real": [], "predicted": []}
        self._eval_time = 0.0

    @hookimpl
    def train_start(self) -> None:
        self._start = self._last = time.perf_counter()

    @hookimpl
    def pre_step(self) -> None:
        self._t0 = time.perf_counter()

    @hookimpl(trylast=True)
    def post_step(self, trainer, metrics) -> None:
        now = time.perf_counter()
        self.step_times["real" if trainer.phase.real else "predicted"].append(now - self._t0)
        self._last = now

    @hookimpl(trylast=True)
    def eval_end(self, step, metrics) -> None:
        now = time.perf_counter()
        trained = self._last - self._start - self._eval_time
        self._eval_time += now - self._last
        self._last = now
        self.evals.append((step, trained, float(metrics["eval_loss"])))


def run(preset: str, overrides: list[str], seed: int, out: Path, hybrid_steps: float) -> dict:
    timeline = Timeline()
    args = [*overrides, f"run.seed={seed}", f"run.out_dir='{out}'", "run.checkpoint_every=0",
            "observers.console.quiet=true", "observers.jsonl.enabled=false"]
    if "jsonl" not in load_registry().names("observer"):
        args.remove("observers.jsonl.enabled=false")
    plugins: list = [timeline]
    if any(a.startswith("schedule={use='hybrid'") for a in overrides):
        real = phasetrain.config.load(preset, args).run.steps
        args.append(f"run.steps={int(real * hybrid_steps)}")
        plugins.append(RealStepCap(real))
    trainer = phasetrain.Trainer.from_config(preset, args, plugins=plugins)
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.fit()
    schedule = trainer.schedule
    return {
        "evals": timeline.evals,
        "real_step_s": statistics.median(timeline.step_times["real"]),
        "predicted_step_s": statistics.median(timeline.step_times["predicted"]) if timeline.step_times["predicted"] else None,
        # the mean includes the steps that run a loss check (the median is a step without one)
        "predicted_step_mean_s": statistics.fmean(timeline.step_times["predicted"]) if timeline.step_times["predicted"] else None,
        "predicted_fraction": getattr(schedule, "predicted_steps", 0) / trainer.state.step,
        "rollbacks": getattr(schedule, "rollbacks", 0),
        "returns": getattr(schedule, "returns", 0),
        "real_steps": getattr(schedule, "real_steps", trainer.state.step),
        "final_eval_loss": timeline.evals[-1][2],
        "steps": trainer.state.step,
    }


def to_target(evals: list[tuple[int, float, float]], target: float) -> tuple[int | None, float | None]:
    for step, seconds, loss in evals:
        if loss <= target:
            return step, seconds
    return None, None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--full", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--hybrid-steps", type=float, default=3.0,
                   help="a hybrid run may take this many times the real steps in all (default 3)")
    p.add_argument("--set", dest="hybrid_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra override for the hybrid variants, e.g. schedule.loss_check_every=4")
    p.add_argument("--out", default="benchmarks/results/hybrid.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    presets = load_registry().presets()
    results, rows = {}, []
    tmp = Path("runs/bench-hybrid")
    for task in args.tasks:
        preset, small, full = TASKS[task]
        if preset not in presets:
            print(f"{task}: preset {preset!r} is not installed; skipped")
            continue
        overrides = small + (full if args.full else [])
        per_variant: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for seed in range(args.seeds):
            order = list(VARIANTS) if seed % 2 == 0 else list(reversed(VARIANTS))
            for variant in order:
                extra = args.hybrid_overrides if VARIANTS[variant] else []
                per_variant[variant].append(run(preset, overrides + VARIANTS[variant] + extra, seed,
                                                tmp / task / variant / "{version}", args.hybrid_steps))
        targets = [r["final_eval_loss"] for r in per_variant["plain"]]
        summary = {}
        for variant, runs in per_variant.items():
            hits = [to_target(r["evals"], t) for r, t in zip(runs, targets, strict=True)]
            plain_hits = [to_target(r["evals"], t) for r, t in zip(per_variant["plain"], targets, strict=True)]
            speedups = [ps / s for (_, ps), (_, s) in zip(plain_hits, hits, strict=True) if s and ps]
            reached = [h for h in hits if h[0] is not None]
            pred_costs = [r["predicted_step_s"] / r["real_step_s"] for r in runs if r["predicted_step_s"]]
            mean_costs = [r["predicted_step_mean_s"] / r["real_step_s"] for r in runs if r["predicted_step_s"]]
            summary[variant] = {
                "reached": f"{len(reached)}/{len(runs)}",
                "median_time_to_target_s": statistics.median([s for _, s in reached]) if reached else None,
                "median_steps_to_target": statistics.median([st for st, _ in reached]) if reached else None,
                "median_speedup": statistics.median(speedups) if len(speedups) == len(runs) else None,
                "speedups": speedups,
                "final_eval_loss": statistics.median(r["final_eval_loss"] for r in runs),
                "final_vs_plain": statistics.median(r["final_eval_loss"] for r in runs) / statistics.median(targets) - 1,
                "predicted_fraction": statistics.median(r["predicted_fraction"] for r in runs),
                "rollbacks": sum(r["rollbacks"] for r in runs),
                "predicted_step_cost": statistics.median(pred_costs) if pred_costs else None,
                "predicted_step_mean_cost": statistics.median(mean_costs) if mean_costs else None,
            }
            rows.append((task, variant, summary[variant]))
        results[task] = {"preset": preset, "overrides": overrides, "seeds": args.seeds, "variants": summary,
                         "runs": per_variant}
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    print(f"\n{'task':<11} {'variant':<14} {'reached':>7} {'time→target s':>13} {'steps→target':>12} "
          f"{'speed-up':>8} {'final eval':>10} {'vs plain':>8} {'predicted':>9} {'rollbacks':>9} {'pred cost':>9} "
          f"{'mean cost':>9}")
    for task, variant, s in rows:
        print(f"{task:<11} {variant:<14} {s['reached']:>7} {fmt(s['median_time_to_target_s'], '.2f'):>13} "
              f"{fmt(s['median_steps_to_target'], '.0f'):>12} {fmt(s['median_speedup'], '.2f'):>8} "
              f"{s['final_eval_loss']:>10.4g} {s['final_vs_plain']:>+8.1%} {s['predicted_fraction']:>9.1%} "
              f"{s['rollbacks']:>9} {fmt(s['predicted_step_cost'], '.3f'):>9} {fmt(s['predicted_step_mean_cost'], '.3f'):>9}")
    print("speed-up: plain time to target / variant time to target (median over seeds; '-' when a seed "
          "missed the target). pred cost: median predicted step time / median real step time (mean cost: "
          "the mean, loss checks included).")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
