"""Hybrid and nowcast training against plain training, measured so that it cannot flatter.

Rules (docs/hybrid.md, "The benchmark"):

- Every variant of a task takes the same N real (gradient) steps with the same optimizer,
  learning-rate schedule and hyper-parameters; predicted steps (``hybrid``) come on top, and
  real steps that a rollback threw away (``nowcast``) are paid for in time.
- Every variant is evaluated every E *real* steps; an evaluation of weights that a rollback
  then abandoned is dropped. Quality is the relative L2 error against the exact solution for
  PINNs and the held-out eval loss otherwise.
- The target of a seed is the median of plain training's last three evaluations (robust to
  one spiky evaluation). Time is training wall-clock, evaluation excluded; a seed that never
  reaches the target scores a speed-up of 0.
- Per variant: the speed-up per seed (plain time to target / variant time to target, the two
  runs of a seed interleaved in one process), its median over seeds with a paired bootstrap
  95 % interval, and quality after N real steps relative to plain (median ratio).

Tasks: ``burgers-adam`` (the Adam stage of the ``burgers`` preset, constant learning rate),
``burgers-e2e`` (the whole preset, Adam then L-BFGS), ``lm-constant`` and ``lm-wsd`` (the
``lm`` preset with a constant and a warmup-stable-decay schedule), ``regression``, and
``helmholtz2d`` (an unseen task: never tuned on, never in the nowcaster's training data).

    python benchmarks/hybrid.py                       # everything, 5 seeds (hours: resumable)
    python benchmarks/hybrid.py --quick               # small sizes, 2 seeds: a few minutes
    python benchmarks/hybrid.py --tasks burgers-adam --variants plain nowcast+linefit
    python benchmarks/hybrid.py --table               # print the table from the JSON only

Results go to ``benchmarks/results/hybrid.json`` (``--out``) after every run; a rerun skips the
(task, variant, seed) runs already there with the same settings, so an interrupted benchmark
continues where it stopped. The table is printed from that file.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

import torch

import phasetrain
from phasetrain import hookimpl
from phasetrain.registry import load_registry

PINN_FULL = ["schedule={use='single'}", "lr_schedule={use='constant'}"]
# task: (preset, quality metric, overrides, --quick overrides, evaluate every E real steps)
TASKS = {
    "burgers-adam": ("burgers", "rel_l2", ["run.steps=2000", *PINN_FULL, "task.eval_grid=[128, 64]"],
                     ["run.steps=600", "sampler.n=1000", "task.eval_grid=[64, 32]"], 50),
    "burgers-e2e": ("burgers", "rel_l2", ["task.eval_grid=[128, 64]"],
                    ["run.steps=620", "sampler.n=1000", "task.eval_grid=[64, 32]",
                     "schedule.stages=[{name='adam', steps=600}, {name='lbfgs', optimizer={use='lbfgs', max_iter=20, "
                     "history_size=50, tolerance_grad=0.0, tolerance_change=0.0}}]"], 10),
    "lm-constant": ("lm", "eval_loss", ["run.steps=400", "task.eval_batches=4",
                                        "lr_schedule={use='constant', warmup_steps=20}"],
                    ["run.steps=160"], 20),
    "lm-wsd": ("lm", "eval_loss", ["run.steps=400", "task.eval_batches=4",
                                   "lr_schedule={use='wsd', warmup_steps=20, decay_fraction=0.2}"],
               ["run.steps=160"], 20),
    "regression": ("regression", "eval_loss", ["run.steps=1000", "lr_schedule={use='constant'}"],
                   ["run.steps=600"], 25),
    "helmholtz2d": ("helmholtz2d", "rel_l2", ["run.steps=500", *PINN_FULL, "task.eval_grid=[64]"],
                    ["run.steps=300", "sampler.n=1000", "task.eval_grid=[32]"], 25),
}
NOWCAST_QUICK = ["schedule.start=40", "schedule.every=10"]  # --quick: short runs still jump
VARIANTS = {
    "plain": [],
    "hybrid+linear": ["schedule={use='hybrid'}", "dynamics={use='linear'}"],
    "nowcast+linefit": ["schedule.use='nowcast'", "dynamics={use='linefit'}"],
    "nowcast+linefit/scale": ["schedule.use='nowcast'", "dynamics={use='linefit'}", "schedule.moments='scale'"],
    "nowcast+nowcaster": ["schedule.use='nowcast'", "dynamics={use='nowcaster'}"],
}
# The hybrid schedule has no stages, and plans its learning-rate schedule over all of its steps
# (predicted ones included, which do not step it): it cannot match a schedule with a decay.
NOT_APPLICABLE = {("burgers-e2e", "hybrid+linear"): "the hybrid schedule has no stages (no L-BFGS)",
                  ("lm-wsd", "hybrid+linear"): "a decaying schedule cannot be matched in real steps"}


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


class Timeline:
    """Training time (evaluation excluded), an evaluation every ``every`` real steps, step times.

    A step is timed from the end of the previous one (so phase changes, probes on entering a
    phase and applied rollbacks are inside it). Real steps are counted twice: ``real`` is where
    the run stands (kept in checkpoints, so a rollback brings it back and drops the evaluations of
    the abandoned branch) and ``executed`` is the work done (never rolled back). Steps that
    jumped or judged a jump, and predicted steps, are counted apart, for the work measure."""

    def __init__(self, every: int, metric: str, cap: int, clock: str) -> None:
        self.every, self.metric, self.cap, self.clock = every, metric, cap, CLOCKS[clock]
        self.real = 0
        self.work = {"executed": 0, "jump": 0, "judge": 0, "predict": 0}
        self.evals: list[list] = []  # [real steps, training seconds, quality, work counts so far]
        self.step_s: dict[str, list[float]] = {}  # by phase name, "judge" for a judging step
        self.verdicts: list[dict] = []  # every judged jump: its fields and the real step it was judged at
        self._eval_s = 0.0
        self._judged = False

    @hookimpl
    def train_start(self) -> None:
        self._start = self._t0 = self.clock()

    @hookimpl
    def event(self, name: str, fields) -> None:
        if name.startswith("jump_"):
            self._judged = True
            self.verdicts.append({"real": self.real + 1, **fields})

    @hookimpl
    def phase_enter(self, phase, previous) -> None:
        # hybrid: entering Correct from Predict probes the loss and may roll back: a judgement too
        self._judged = self._judged or (phase.name == "correct" and previous is not None and previous.name == "predict")

    @hookimpl(trylast=True)
    def post_step(self, trainer) -> None:
        now = self.clock()
        kind = "judge" if self._judged else trainer.phase.name
        self.step_s.setdefault(kind, []).append(now - self._t0)
        self._judged = False
        if kind in ("jump", "judge"):
            self.work[kind] += 1
        if not trainer.phase.real:
            self.work["predict"] += 1
        else:
            self.real += 1
            self.work["executed"] += 1
            if self.real % self.every == 0:
                trained = now - self._start - self._eval_s
                value = float(trainer.evaluate()[self.metric])
                self.evals.append([self.real, trained, value, dict(self.work)])
            if self.real >= self.cap:
                trainer.request_stop()
        self._t0 = self.clock()
        self._eval_s += self._t0 - now

    @hookimpl
    def checkpoint(self, state) -> None:
        state["benchmark_timeline"] = {"real": self.real}

    @hookimpl
    def restore(self, state) -> None:
        if "benchmark_timeline" in state:
            self.real = state["benchmark_timeline"]["real"]
            self.evals = [e for e in self.evals if e[0] <= self.real]


def run_one(preset: str, metric: str, overrides: list[str], every: int, seed: int, out: Path, clock: str) -> dict:
    config = phasetrain.config.load(preset, overrides)
    real = config.run.steps
    args = [*overrides, f"run.seed={seed}", f"run.out_dir='{out}'", "run.checkpoint_every=0", "run.eval_every=0",
            "observers.console.quiet=true", "observers.jsonl.enabled=false"]
    hybrid = config.schedule.use == "hybrid"
    if hybrid:  # predicted steps come on top of the real ones (at most 2 more per real step)
        args.append(f"run.steps={3 * real}")
    timeline = Timeline(every, metric, real, clock)
    trainer = phasetrain.Trainer.from_config(preset, args, plugins=[timeline])
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.fit()
    schedule = trainer.schedule
    steps = timeline.step_s
    median = {k: statistics.median(v) for k, v in steps.items()}
    plain_kinds = [k for k in steps if k not in ("judge", "predict", "jump")]
    unit = statistics.median([t for k in plain_kinds for t in steps[k]])  # an ordinary real step
    # What each kind of step costs beyond an ordinary real step, in real steps (medians: robust to
    # bursts of load). Predicted steps cost their mean (loss checks included), not one step.
    extra = {"executed": 1.0, "jump": max(0.0, median.get("jump", unit) / unit - 1),
             "judge": max(0.0, median.get("judge", unit) / unit - 1),
             "predict": statistics.fmean(steps["predict"]) / unit if "predict" in steps else 0.0}
    for e in timeline.evals:
        e[3] = sum(extra[k] * n for k, n in e[3].items())  # work so far, in real steps
    result = {
        "evals": timeline.evals,  # [real steps, training seconds, quality, work in real steps]
        "real_steps": timeline.real,
        "executed": timeline.work["executed"],
        "train_s": timeline.evals[-1][1] if timeline.evals else None,
        "final": timeline.evals[-1][2] if timeline.evals else None,
        "real_step_s": unit,
        "step_cost": extra,
        "step_s": {k: [median[k], len(v)] for k, v in steps.items()},
    }
    if hybrid:
        result.update(predicted_steps=schedule.predicted_steps, rollbacks=schedule.rollbacks, returns=schedule.returns)
    if config.schedule.use == "nowcast":
        c = schedule.controller
        result.update(jumps=c.jumps, kept=c.kept, rollbacks=schedule.rollbacks, probes=schedule.probes,
                      verdicts=timeline.verdicts, wasted_steps=timeline.work["executed"] - timeline.real,
                      final_ahead=c.ahead)
    return result


# -- statistics ------------------------------------------------------------------------------------


def first(evals: list, target: float, column: int) -> float | None:
    """Column ``column`` of the first evaluation at or below ``target`` (1: seconds, 0: real
    steps, 3: work in real steps)."""
    return next((e[column] for e in evals if e[2] <= target), None)


def target_of(plain: dict) -> float:
    return statistics.median(e[2] for e in plain["evals"][-3:])


def bootstrap_median(values: list[float], resamples: int = 4000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of the median, resampling the seeds (pairs stay together)."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return meds[int(0.025 * resamples)], meds[int(0.975 * resamples) - 1]


def summarize(task: str, runs: dict[str, dict[int, dict]]) -> dict[str, dict]:
    plain = runs.get("plain", {})
    out = {}
    for variant, by_seed in runs.items():
        seeds = sorted(s for s in by_seed if s in plain)
        if not seeds:
            continue
        speedups, work_speedups, step_speedups, quality, reached = [], [], [], [], 0
        for s in seeds:
            target, mine, base = target_of(plain[s]), by_seed[s]["evals"], plain[s]["evals"]
            ratios = []
            for column in (1, 3, 0):
                b, v = first(base, target, column), first(mine, target, column)
                ratios.append(b / v if v else 0.0)
            reached += first(mine, target, 0) is not None
            speedups.append(ratios[0]), work_speedups.append(ratios[1]), step_speedups.append(ratios[2])
            quality.append(by_seed[s]["final"] / plain[s]["final"])
        row = {"seeds": seeds, "speedups": speedups, "median_speedup": statistics.median(speedups),
               "interval": bootstrap_median(speedups), "above_1": sum(x > 1 for x in speedups), "reached": reached,
               "work_speedups": work_speedups, "median_work_speedup": statistics.median(work_speedups),
               "work_interval": bootstrap_median(work_speedups), "work_above_1": sum(x > 1 for x in work_speedups),
               "step_speedup": statistics.median(step_speedups),
               "quality_ratio": statistics.median(quality), "final": statistics.median(by_seed[s]["final"] for s in seeds)}
        runs_ = [by_seed[s] for s in seeds]
        if "jumps" in runs_[0]:
            jumps = sum(r["jumps"] for r in runs_)
            row["kept"] = f"{sum(r['kept'] for r in runs_)}/{jumps}"
            row["jump_cost"] = statistics.median(r["step_cost"]["jump"] + r["step_cost"]["judge"] for r in runs_
                                                 if r["jumps"]) if jumps else None
            row["wasted"] = statistics.median(r["wasted_steps"] / r["real_steps"] for r in runs_)
        if "predicted_steps" in runs_[0]:
            row["predicted"] = statistics.median(r["predicted_steps"] / (r["predicted_steps"] + r["real_steps"]) for r in runs_)
            row["rollbacks"] = sum(r["rollbacks"] for r in runs_)
        out[variant] = row
    return out


def table(results: dict) -> str:
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    lines = [f"{'task':<13} {'variant':<22} {'work':>5} {'95% interval':>12} {'>1':>4} {'time':>5} {'95% interval':>12} "
             f"{'>1':>4} {'reached':>7} {'steps':>5} {'quality':>7} {'kept':>6} {'jump':>5} {'wasted':>6} {'pred':>4}  "
             "work speed-up per seed"]
    for task, entry in results["tasks"].items():
        rows = summarize(task, {v: {int(s): r for s, r in by.items()} for v, by in entry["runs"].items()})
        for variant in [v for v in VARIANTS if v in rows]:
            r = rows[variant]
            n = len(r["seeds"])
            (lo, hi), (wlo, whi) = r["interval"], r["work_interval"]
            lines.append(
                f"{task:<13} {variant:<22} {r['median_work_speedup']:>5.2f} {f'{wlo:.2f}-{whi:.2f}':>12} "
                f"{r['work_above_1']:>2}/{n} {r['median_speedup']:>5.2f} {f'{lo:.2f}-{hi:.2f}':>12} {r['above_1']:>2}/{n} "
                f"{r['reached']:>5}/{n} {r['step_speedup']:>5.2f} {r['quality_ratio']:>7.3f} {r.get('kept', '-'):>6} "
                f"{fmt(r.get('jump_cost'), '.1f'):>5} {fmt(r.get('wasted'), '.1%'):>6} {fmt(r.get('predicted'), '.0%'):>4}  "
                + " ".join(f"{x:.2f}" for x in r["work_speedups"]))
        for (t, v), why in NOT_APPLICABLE.items():
            if t == task:
                lines.append(f"{task:<13} {v:<22} n/a: {why}")
    clock = results.get("clock", "cpu")
    lines += [
        "work: speed-up to the target in work (real steps executed, rolled-back ones included, plus what probes, "
        "nowcasts and predicted steps cost, each measured against an ordinary real step of the same run); time: "
        f"the same in training time ({clock} clock). Target: median of plain's last three evaluations (0 = missed). "
        "Median over seeds with a paired bootstrap 95 % interval; >1: seeds above 1. steps: real steps to the target "
        "(median ratio). quality: the variant's quality after the same real steps / plain's (median; < 1 is better). "
        "kept: jumps kept / tried. jump: what a jump and its judgement add, in real steps; wasted: real steps thrown "
        "away by rollbacks; pred: share of predicted steps (hybrid).",
    ]
    return "\n".join(lines)


FORMAT = 2  # of a run's record; records of another format are run again


def settings_key(preset: str, overrides: list[str]) -> str:
    return hashlib.sha256(json.dumps([FORMAT, preset, overrides]).encode()).hexdigest()[:16]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="small sizes, 2 seeds, 3 tasks: a few minutes")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier timings)")
    p.add_argument("--clock", choices=list(CLOCKS), default="cpu",
                   help="cpu: this process's CPU time (default; with one thread, what a quiet machine's wall clock "
                        "would show, and steady on a shared one); wall: elapsed time")
    p.add_argument("--set", dest="nowcast_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra override for the nowcast variants, e.g. schedule.every=10")
    p.add_argument("--table", action="store_true", help="only print the table from --out")
    p.add_argument("--out", default="")
    args = p.parse_args()
    out = Path(args.out or ("benchmarks/results/hybrid-quick.json" if args.quick else "benchmarks/results/hybrid.json"))
    results = json.loads(out.read_text()) if out.exists() else {}
    if "tasks" not in results:  # none yet, or a file from the benchmark before issue 17
        results = {"tasks": {}}
    if args.table:
        print(table(results))
        return
    if args.quick:
        args.seeds = min(args.seeds, 2)
        if args.tasks == list(TASKS):
            args.tasks = ["burgers-adam", "lm-constant", "regression"]
    torch.set_num_threads(args.threads)
    presets = load_registry().presets()
    results.update(torch=torch.__version__, platform=platform.platform(), cpus=os.cpu_count(), threads=args.threads,
                   clock=args.clock)
    results.setdefault("load", []).append({"before": os.getloadavg()})
    for task in args.tasks:
        preset, metric, overrides, quick, every = TASKS[task]
        if preset not in presets:
            print(f"{task}: preset {preset!r} is not installed; skipped")
            continue
        overrides = overrides + (quick if args.quick else [])
        entry = results["tasks"].setdefault(task, {"preset": preset, "metric": metric, "every": every, "runs": {}})
        for seed in range(args.seeds):
            order = args.variants if seed % 2 == 0 else list(reversed(args.variants))
            for variant in order:
                if (task, variant) in NOT_APPLICABLE:
                    continue
                extra = VARIANTS[variant] + (args.nowcast_overrides if "nowcast" in variant else [])
                if "nowcast" in variant:
                    extra = extra + (NOWCAST_QUICK if args.quick else [])
                full = overrides + extra
                key = settings_key(preset, full + [args.clock, str(args.threads)])
                done = entry["runs"].setdefault(variant, {}).get(str(seed))
                if done and done.get("key") == key:
                    continue
                started = time.perf_counter()
                result = run_one(preset, metric, full, every, seed, Path("runs/bench-hybrid") / task / variant / "{version}", args.clock)
                result.update(key=key, overrides=full, wall_s=time.perf_counter() - started, load=os.getloadavg())
                entry["runs"][variant][str(seed)] = result
                print(f"{task} {variant} seed {seed}: final {metric} {result['final']:.4g}, "
                      f"{result['wall_s']:.0f} s", flush=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = out.with_suffix(".tmp")
                tmp.write_text(json.dumps(results, indent=1))
                tmp.replace(out)
    results["load"][-1]["after"] = os.getloadavg()
    out.write_text(json.dumps(results, indent=1))
    print()
    print(table(results))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
