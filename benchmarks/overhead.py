"""Kernel overhead: phasetrain's `single` schedule vs a hand-written PyTorch loop.

Both train the same model on the same batches with the same optimizer and learning-rate
schedule, in one process, interleaved over several repeats; the console logger is on in
phasetrain and the hand-written loop prints at the same cadence. Prints per-step medians, the
ratio and whether the final losses are identical; writes JSON.

    python benchmarks/overhead.py [--steps 2000] [--repeats 7] [--preset regression]
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


def run_phasetrain(args: argparse.Namespace, out: str) -> tuple[float, float]:
    clock = _Clock()
    trainer = phasetrain.Trainer.from_config(args.preset, overrides(args, out), plugins=[clock])
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
    tmp = "runs/bench-overhead"
    hand, ours, losses = [], [], []
    run_handwritten(args, tmp), run_phasetrain(args, tmp)  # warm-up: imports, allocator, caches
    for r in range(args.repeats):
        order = [run_handwritten, run_phasetrain] if r % 2 == 0 else [run_phasetrain, run_handwritten]
        for fn in order:
            per_step, loss = fn(args, tmp)
            (hand if fn is run_handwritten else ours).append(per_step)
            losses.append((fn.__name__, loss))
    h, o = statistics.median(hand), statistics.median(ours)
    final = {name: loss for name, loss in losses}
    identical = final["run_handwritten"] == final["run_phasetrain"]
    print(f"{'loop':<14} {'median µs/step':>15} {'min':>9} {'max':>9}")
    for name, xs in (("hand-written", hand), ("phasetrain", ours)):
        print(f"{name:<14} {statistics.median(xs) * 1e6:>15.1f} {min(xs) * 1e6:>9.1f} {max(xs) * 1e6:>9.1f}")
    print(f"ratio phasetrain / hand-written (median): {o / h:.4f}  (target <= 1.02)")
    print(f"final loss hand-written {final['run_handwritten']!r}  phasetrain {final['run_phasetrain']!r}  identical: {identical}")
    result = {
        "preset": args.preset, "steps": args.steps, "repeats": args.repeats, "threads": args.threads,
        "handwritten_us_per_step": [x * 1e6 for x in hand], "phasetrain_us_per_step": [x * 1e6 for x in ours],
        "median_ratio": o / h, "final_loss_identical": identical,
        "final_loss": final, "torch": torch.__version__,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
