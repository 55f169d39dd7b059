"""Time to accuracy of a PINN preset: relative L2 error against training time, at a fixed cadence.

A plugin measures the error on the preset's test grid after the first step that ends at least
``--every`` seconds of training after the last measurement (inside the L-BFGS stage too: one
L-BFGS step is ``max_iter`` iterations, so a preset with a small ``max_iter`` is measured
finely). The clock stops while it measures, so the measurements cost the run nothing. Both the
wall time and the process's CPU time are recorded: on a machine shared with other work, CPU time
over the threads used is the better estimate of what the same run takes on a quiet one.

    python benchmarks/pinn_curve.py burgers                       # the preset as it ships
    python benchmarks/pinn_curve.py burgers --budget 300 --every 5 --threads 2
    python benchmarks/pinn_curve.py burgers --quick                 # 60 s: a smoke test
    python benchmarks/pinn_curve.py burgers --set task.hard_constraints=true

Prints the curve and the first time each threshold (``--thresholds``) was reached, and writes
benchmarks/results/pinn-curve-<preset>.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import phasetrain
from phasetrain import hookimpl
from phasetrain.plugins.pinn.problem_base import relative_l2

ROOT = Path(__file__).resolve().parent.parent


class Curve:
    """Measures rel_l2 (and the unknowns' errors) every ``every`` seconds of training, up to
    ``budget`` seconds; the time spent measuring is not counted."""

    def __init__(self, every: float, budget: float, cpu_clock: bool = False) -> None:
        self.every, self.budget, self.cpu_clock = every, budget, cpu_clock
        self.points: list[dict] = []
        self.evaluations = 0  # loss evaluations (closure calls): L-BFGS makes several per step
        self.paused = (0.0, 0.0)
        self.start = self.cpu_start = self.last = 0.0

    def clock(self) -> tuple[float, float]:
        return time.perf_counter() - self.start - self.paused[0], time.process_time() - self.cpu_start - self.paused[1]

    @hookimpl
    def train_start(self) -> None:
        self.start, self.cpu_start, self.paused = time.perf_counter(), time.process_time(), (0.0, 0.0)

    @hookimpl
    def after_backward(self) -> None:
        self.evaluations += 1

    @hookimpl(trylast=True)
    def post_step(self, trainer, step: int, metrics) -> None:
        wall, cpu = self.clock()
        now = cpu if self.cpu_clock else wall
        done = now >= self.budget
        if step == 0 or now - self.last >= self.every or done:
            self.measure(trainer, step + 1, wall, cpu, float(metrics["loss"]))
            self.last = now
        if done:
            trainer.request_stop()

    def measure(self, trainer, steps: int, wall: float, cpu: float, loss: float) -> None:
        began, began_cpu = time.perf_counter(), time.process_time()
        task = trainer.task
        grid, exact = task.grid()
        model = trainer.model
        model.eval()
        point = {"wall_s": wall, "cpu_s": cpu, "steps": steps, "phase": trainer.state.phase,
                 "evaluations": self.evaluations, "loss": loss,
                 "rel_l2": relative_l2(task.predict(model, grid), exact) if exact is not None else None}
        model.train()
        if task.unknowns is not None:
            point.update({f"coef_{k}": v for k, v in task.unknowns.values().items()})
            point.update({f"coef_{k}_error": v for k, v in task.unknowns.errors().items()})
        self.points.append(point)
        print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in point.items()), flush=True)
        self.paused = (self.paused[0] + time.perf_counter() - began, self.paused[1] + time.process_time() - began_cpu)


def first_reaching(points: list[dict], threshold: float) -> dict | None:
    return next((p for p in points if p["rel_l2"] is not None and p["rel_l2"] <= threshold), None)


def run(preset: str, overrides: list[str], budget: float, every: float, threads: int, out_dir: str,
        cpu_clock: bool = False) -> dict:
    curve = Curve(every, budget, cpu_clock)
    sets = ["observers.console.quiet=true", "run.checkpoint_every=0", "run.eval_every=0", f"run.out_dir='{out_dir}'",
            f"run.threads={threads}", *overrides]
    trainer = phasetrain.Trainer.from_config(preset, sets, plugins=[curve])
    load = os.getloadavg()[0]
    outcome = trainer.fit()
    return {"preset": preset, "overrides": overrides, "budget_s": budget, "every_s": every, "threads": threads,
            "clock": "cpu" if cpu_clock else "wall",
            "steps": outcome.steps, "status": outcome.status, "final": outcome.eval, "curve": curve.points,
            "load_avg_before": load, "load_avg_after": os.getloadavg()[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("preset")
    p.add_argument("--budget", type=float, default=300.0, help="seconds of training (the clock excludes measuring)")
    p.add_argument("--every", type=float, default=5.0, help="seconds of training between measurements")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="what --budget and --every count: wall time, or the process's CPU time (on a busy machine)")
    p.add_argument("--thresholds", type=float, nargs="*", default=[1e-2, 1e-3, 3e-4])
    p.add_argument("--quick", action="store_true", help="a 60 s budget, measured every 5 s")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config overrides")
    p.add_argument("--out", default="")
    args = p.parse_args()
    budget, every = (60.0, 5.0) if args.quick else (args.budget, args.every)
    torch.set_num_threads(args.threads)
    result = run(args.preset, args.overrides, budget, every, args.threads, f"runs/bench-curve/{args.preset}/{{version}}",
                 args.clock == "cpu")
    result.update(torch=torch.__version__, platform=platform.platform(), cpus=os.cpu_count(), quick=args.quick)
    print(f"\n{'threshold':>10} {'wall s':>8} {'cpu s':>8} {'steps':>6} {'evals':>6}  (load {result['load_avg_before']:.1f})")
    result["reached"] = {}
    for threshold in args.thresholds:
        hit = first_reaching(result["curve"], threshold)
        result["reached"][str(threshold)] = hit
        print(f"{threshold:>10.0e} " + ("not reached" if hit is None else
              f"{hit['wall_s']:>8.1f} {hit['cpu_s']:>8.1f} {hit['steps']:>6} {hit['evaluations']:>6}"))
    out = Path(args.out or f"benchmarks/results/pinn-curve-{args.preset}{'-quick' if args.quick else ''}.json")
    out = out if out.is_absolute() else ROOT / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
