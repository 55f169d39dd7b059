"""PINN benchmark: accuracy of every PINN preset, RAD vs uniform, 100K points, per-step cost.

1. Accuracy: each preset trains in its own subprocess (so its peak RSS is its own) and reports
   problem, sampler, points, steps, wall time, relative L2 error against the exact solution,
   and peak RSS.
2. RAD vs uniform on Burgers: ``burgers-rad`` against the same config with a uniform sampler of
   the same point count; the ratio of their errors.
3. 100K collocation points: ``burgers-100k``; its peak RSS (target <= 4 GB).
4. Per-step cost: phasetrain's PINN step against a hand-written PyTorch loop computing the same
   residual and condition losses on the same model and points, interleaved in one process;
   median seconds per step and the ratio (target <= 1.1).

    python benchmarks/pinn.py                      # everything at the presets' own settings
    python benchmarks/pinn.py --problems burgers   # presets whose name starts with these
    python benchmarks/pinn.py --quick              # short runs: a smoke test of the whole chain

Prints a table and writes benchmarks/results/pinn.json (``--out``). Wall times depend on the
machine's load; the load average before and after each run is recorded next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import torch

import phasetrain
from phasetrain import config as config_mod
from phasetrain import hookimpl
from phasetrain.registry import load_registry

ROOT = Path(__file__).resolve().parent.parent

def pinn_presets() -> list[str]:
    out = []
    for name, (resource_, _origin) in load_registry().presets().items():
        data = tomllib.loads(resource_.read_text())
        if data.get("task", {}).get("use") == "pinn":
            out.append(name)
    return sorted(out)


def quick_overrides(preset: str) -> list[str]:
    """--quick: at most 200 steps of the first stage and 20 of the second, 2000 points; the
    preset's own optimizers, sampler kind and network."""
    cfg = config_mod.load(preset)
    stages = cfg.schedule.options.stages
    first = max(1, min(stages[0].steps, 200))
    raw = [
        {"name": s.name, **({"steps": first} if i == 0 else {}),
         **({"optimizer": config_mod.converter_for(load_registry()).unstructure(s.optimizer)} if s.optimizer else {})}
        for i, s in enumerate(stages[:2])
    ]
    stages_toml = "[" + ", ".join(_inline(s) for s in raw) + "]"
    return [f"run.steps={first + 20}", f"schedule.stages={stages_toml}", "sampler.n=2000", "run.eval_every=0"]


def _inline(value: object) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_inline(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    return repr(value)


# ---------------------------------------------------------------------------------------------
# One training run, in a child process
# ---------------------------------------------------------------------------------------------


def child(preset: str, overrides: list[str]) -> dict:
    """Train ``preset`` and return its numbers (this runs in the child process)."""
    trainer = phasetrain.Trainer.from_config(
        preset, ["observers.console.quiet=true", "run.checkpoint_every=0", *overrides]
    )
    cfg = trainer.config
    load_before = os.getloadavg()[0]
    outcome = trainer.fit()
    return {
        "preset": preset,
        "overrides": overrides,
        "problem": cfg.residual.use,
        "sampler": cfg.sampler.use,
        "points": int(trainer.task.points.shape[0]),
        "dtype": cfg.task.options.dtype,
        "network": f"{cfg.task.options.depth} x {cfg.task.options.hidden} {cfg.task.options.activation}",
        "steps": outcome.steps,
        "stages": {s.name: s.steps for s in cfg.schedule.options.stages},
        "wall_s": outcome.seconds,
        "rel_l2": outcome.eval.get("rel_l2"),
        **{k: v for k, v in outcome.eval.items() if k.startswith(("rel_l2_", "coef_"))},
        "eval_loss": outcome.eval.get("eval_loss"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg()[0],
    }


def run_child(preset: str, overrides: list[str], out_dir: str) -> dict:
    cmd = [sys.executable, __file__, "--child", preset, *[f"--set={o}" for o in overrides],
           f"--set=run.out_dir='{out_dir}'"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{preset} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Per-step cost: phasetrain vs a hand-written loop
# ---------------------------------------------------------------------------------------------


class _StepClock:
    """Wall time from the first pre_step to the last post_step (no evaluation or checkpoint)."""

    def __init__(self) -> None:
        self.start = self.end = 0.0

    @hookimpl(tryfirst=True)
    def pre_step(self, step: int) -> None:
        if step == 0:
            self.start = time.perf_counter()

    @hookimpl(trylast=True)
    def post_step(self) -> None:
        self.end = time.perf_counter()


def _trainer(preset: str, steps: int, out: str, extra: list[str]) -> phasetrain.Trainer:
    sets = [f"run.steps={steps}", f"run.out_dir='{out}'", "run.eval_every=0", "run.checkpoint_every=0",
            "observers.console.quiet=true", "schedule={use='single'}", "optimizer={use='adam', lr=1e-3}", *extra]
    return phasetrain.Trainer.from_config(preset, sets)


def time_phasetrain(preset: str, steps: int, out: str, extra: list[str]) -> tuple[float, float]:
    trainer = _trainer(preset, steps, out, extra)
    clock = _StepClock()
    trainer.pm.register(clock)
    trainer.hooks.refresh()  # the loop dispatches through a cache of the hook implementations
    outcome = trainer.fit()
    return (clock.end - clock.start) / steps, outcome.metrics["loss"]


def time_handwritten(preset: str, steps: int, out: str, extra: list[str]) -> tuple[float, float]:
    """The same model, points and Adam, trained by a plain loop that computes the residuals."""
    trainer = _trainer(preset, steps, out, extra)  # only to build the same model and points
    task, model = trainer.task, trainer.model
    problem, conditions = task.problem, task.conditions
    sets = [task.points, *task.condition_points]
    residuals = [problem.residual, *(c.residual for c in conditions)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = 0.0
        for points, residual in zip(sets, residuals, strict=True):
            x = points.detach().requires_grad_(True)
            loss = loss + residual(x, model(x)).square().sum(dim=1).mean()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps, float(loss)


def step_cost(preset: str, steps: int, repeats: int, extra: list[str]) -> dict:
    out = "runs/bench-pinn-step/{version}"  # a directory per run: a run never reuses another's
    hand, ours = [], []
    time_handwritten(preset, 3, out, extra), time_phasetrain(preset, 3, out, extra)  # warm-up
    for r in range(repeats):
        order = [time_handwritten, time_phasetrain] if r % 2 == 0 else [time_phasetrain, time_handwritten]
        for fn in order:
            per_step, _loss = fn(preset, steps, out, extra)
            (hand if fn is time_handwritten else ours).append(per_step)
    h, o = statistics.median(hand), statistics.median(ours)
    return {
        "preset": preset, "steps": steps, "repeats": repeats, "overrides": extra,
        "handwritten_ms": [x * 1e3 for x in hand], "phasetrain_ms": [x * 1e3 for x in ours],
        "points": int(_trainer(preset, 1, out, extra).task.points.shape[0]),
        "handwritten_median_ms": h * 1e3, "phasetrain_median_ms": o * 1e3, "ratio": o / h,
    }


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else str(value)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problems", nargs="*", default=None, help="presets whose name starts with these")
    p.add_argument("--quick", action="store_true", help="short runs (a smoke test, not the accuracy targets)")
    p.add_argument("--skip-accuracy", action="store_true", help="only the per-step comparison")
    p.add_argument("--skip-step", action="store_true", help="no per-step comparison")
    p.add_argument("--step-steps", type=int, default=30)
    p.add_argument("--step-repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default="benchmarks/results/pinn.json")
    p.add_argument("--child", metavar="PRESET", help=argparse.SUPPRESS)
    p.add_argument("--set", dest="overrides", action="append", default=[], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.overrides)))
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = [f"run.threads={args.threads}"] if args.threads else []
    presets = pinn_presets()
    if args.problems:
        presets = [n for n in presets if any(n.startswith(prefix) for prefix in args.problems)]
    result: dict = {
        "quick": args.quick, "torch": torch.__version__, "platform": platform.platform(),
        "cpus": os.cpu_count(), "threads": args.threads or torch.get_num_threads(), "runs": [],
    }
    if not args.skip_accuracy:
        print(f"{'preset':<16} {'problem':<16} {'sampler':<8} {'points':>7} {'steps':>6} {'wall s':>7} "
              f"{'rel L2':>9} {'peak RSS MB':>11} {'load':>5}")
        jobs = [(name, [*threads, *(quick_overrides(name) if args.quick else [])]) for name in presets]
        if "burgers-rad" in presets:  # the uniform twin of burgers-rad: same n, schedule, network
            n = config_mod.load("burgers-rad").sampler.options.n
            jobs.append(("burgers-rad", [*jobs[presets.index("burgers-rad")][1],
                                          f"sampler={{use='uniform', n={2000 if args.quick else n}}}"]))
        for name, sets in jobs:
            row = run_child(name, sets, f"runs/bench-pinn/{name}/{{version}}")
            result["runs"].append(row)
            label = name if row["sampler"] != "uniform" or name != "burgers-rad" else "(uniform)"
            coefficients = "".join(f" {k[5:-6]} error {_fmt(v)}" for k, v in row.items()
                                   if k.startswith("coef_") and k.endswith("_error"))
            print(f"{label:<16} {row['problem']:<16} {row['sampler']:<8} {row['points']:>7} {row['steps']:>6} "
                  f"{row['wall_s']:>7.1f} {_fmt(row['rel_l2']):>9} {row['peak_rss_mb']:>11.0f} "
                  f"{row['load_avg_before']:>5.1f}{coefficients}", flush=True)
        rad = [r for r in result["runs"] if r["preset"] == "burgers-rad"]
        if len(rad) == 2 and rad[0]["rel_l2"] and rad[1]["rel_l2"]:
            ratio = rad[0]["rel_l2"] / rad[1]["rel_l2"]
            result["rad_vs_uniform"] = {"rad": rad[0]["rel_l2"], "uniform": rad[1]["rel_l2"], "ratio": ratio}
            print(f"RAD / uniform error on Burgers at {rad[0]['points']} points: {ratio:.3f}")
        big = [r for r in result["runs"] if r["preset"] == "burgers-100k"]
        if big:
            print(f"burgers-100k peak RSS: {big[0]['peak_rss_mb']:.0f} MB (target <= 4096 MB)")
    if not args.skip_step:
        extra = [*threads, *(["sampler.n=2000"] if args.quick else [])]
        step = step_cost("burgers", args.step_steps, args.step_repeats, extra)
        result["step_cost"] = step
        print(f"per-step (Burgers, Adam, {step['points']} points): hand-written {step['handwritten_median_ms']:.1f} ms, phasetrain "
              f"{step['phasetrain_median_ms']:.1f} ms, ratio {step['ratio']:.3f} (target <= 1.1)")
    out = Path(args.out)
    if not out.is_absolute():
        out = ROOT / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
