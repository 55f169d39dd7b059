"""Kernel overhead: phasetrain's `single` schedule vs a hand-written PyTorch loop.

All variants train the same model on the same batches with the same optimizer and learning-rate
schedule, in one process, interleaved over several repeats; the console logger is on in
phasetrain and the hand-written loop prints at the same cadence. Two phasetrain variants: the
defaults (the ``[nonfinite]`` plugin checks every step's loss and gradients, which the hand loop
does not), and ``[nonfinite] use = "off"`` (the kernel alone: the like-for-like comparison the
overhead target is about). Prints per-step medians, the ratios and whether the final losses are
identical; writes JSON.

    python benchmarks/overhead.py [--steps 2000] [--repeats 7] [--preset regression]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import time
from pathlib import Path

import torch

import phasetrain
from phasetrain import hookimpl


class _Clock:
    """Times fit() from train_start to the end-of-run evaluation (no checkpoint I/O inside)."""

    def __init__(self) -> None:
        self.start = self.end = 0.0

    @hookimpl
    def train_start(self) -> None:
        self.start = time.perf_counter()

    @hookimpl(tryfirst=True)
    def eval_end(self) -> None:
        self.end = time.perf_counter()


def overrides(args: argparse.Namespace, out: str) -> list[str]:
    return [
        f"run.steps={args.steps}",
        f"run.out_dir='{out}'",
        "run.checkpoint_every=0",
        "run.eval_every=0",
        f"run.log_every={args.log_every}",
        "run.device='cpu'",
        "observers.jsonl.enabled=false",  # like the hand-written loop: printed progress, no file
    ]


def run_phasetrain(args: argparse.Namespace, out: str, extra: tuple[str, ...] = ()) -> tuple[float, float]:
    clock = _Clock()
    trainer = phasetrain.Trainer.from_config(args.preset, [*overrides(args, out), *extra], plugins=[clock])
    with contextlib.redirect_stdout(io.StringIO()):
        outcome = trainer.fit()
    return (clock.end - clock.start) / args.steps, outcome.metrics["loss"]


def run_handwritten(args: argparse.Namespace, out: str) -> tuple[float, float]:
    # The same model, data and initial weights: a Trainer is built only to construct them
    # (it seeds and builds the task exactly as a run does); training is plain PyTorch.
    trainer = phasetrain.Trainer.from_config(args.preset, overrides(args, out))
    task, model = trainer.task, trainer.model
    opt_cfg = trainer.config.optimizer.options
    optimizer = torch.optim.Adam(
        model.parameters(), lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), eps=opt_cfg.eps,
        weight_decay=opt_cfg.weight_decay, foreach=opt_cfg.foreach,
    )
    sched_cfg = trainer.config.lr_schedule.options
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=args.steps, eta_min=opt_cfg.lr * sched_cfg.min_lr_ratio
    )
    sink = io.StringIO()
    model.train()
    start = time.perf_counter()
    for i in range(args.steps):
        x, y = task.batch(i)
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if (i + 1) % args.log_every == 0:
            print(f"step {i + 1} loss {loss.item():.4g} lr {optimizer.param_groups[0]['lr']:.4g}", file=sink)
    model.eval()
    with torch.no_grad():
        task.evaluate(model)
    elapsed = time.perf_counter() - start
    return elapsed / args.steps, loss.item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="regression")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=1, help="torch threads (tiny steps run best on 1)")
    p.add_argument("--out", default="benchmarks/results/overhead.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tmp = "runs/bench-overhead/{version}"  # a directory per run: a run never reuses another's
    variants = {
        "hand-written": lambda: run_handwritten(args, tmp),
        "phasetrain (defaults)": lambda: run_phasetrain(args, tmp),
        "phasetrain (nonfinite off)": lambda: run_phasetrain(args, tmp, ("nonfinite={use='off'}",)),
    }
    for run in variants.values():  # warm-up: imports, allocator, caches
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    losses: dict[str, float] = {}
    names = list(variants)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate the order
            per_step, losses[name] = variants[name]()
            times[name].append(per_step)
    hand = statistics.median(times["hand-written"])
    print(f"{'loop':<28} {'median µs/step':>15} {'min':>9} {'max':>9} {'ratio':>8}")
    for name, xs in times.items():
        m = statistics.median(xs)
        print(f"{name:<28} {m * 1e6:>15.1f} {min(xs) * 1e6:>9.1f} {max(xs) * 1e6:>9.1f} {m / hand:>8.4f}")
    kernel = statistics.median(times["phasetrain (nonfinite off)"]) / hand
    defaults = statistics.median(times["phasetrain (defaults)"]) / hand
    identical = len(set(losses.values())) == 1
    print(f"kernel overhead (nonfinite off) / hand-written: {kernel:.4f}  (target <= 1.03, goal 1.02)")
    print(f"with the default non-finite check: {defaults:.4f}")
    print(f"final losses {losses}  identical: {identical}")
    result = {
        "preset": args.preset, "steps": args.steps, "repeats": args.repeats, "threads": args.threads,
        "us_per_step": {name: [x * 1e6 for x in xs] for name, xs in times.items()},
        "median_ratio": kernel, "median_ratio_defaults": defaults, "final_loss_identical": identical,
        "final_loss": losses, "torch": torch.__version__, "load_average": os.getloadavg(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
