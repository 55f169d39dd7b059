"""Cost of the observers: per-step time with the console only, with the default metrics file
(console + jsonl) and with TensorBoard on top, on the tiny `regression` steps (the worst case).

The three variants run in one process, interleaved over several repeats (the order rotates), on
the same config; prints per-step medians and ratios to the console-only baseline; writes JSON.

    python benchmarks/observers.py [--steps 2000] [--repeats 7] [--log-every 50]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import phasetrain
from phasetrain import hookimpl

VARIANTS = {
    "console": ["observers.jsonl.enabled=false"],
    "console+jsonl": [],
    "console+jsonl+tensorboard": ["observers.tensorboard={hparams=false}"],
}


class _Clock:
    """Times fit() from train_start to the end-of-run evaluation (no checkpoint I/O inside)."""

    def __init__(self) -> None:
        self.start = self.end = 0.0

    @hookimpl(tryfirst=True)
    def train_start(self) -> None:
        self.start = time.perf_counter()

    @hookimpl(tryfirst=True)
    def eval_end(self) -> None:
        self.end = time.perf_counter()


def run(variant: str, args: argparse.Namespace, out: str) -> float:
    clock = _Clock()
    overrides = [f"run.steps={args.steps}", f"run.out_dir='{out}'", "run.checkpoint_every=0",
                 "run.eval_every=0", f"run.log_every={args.log_every}", "run.device='cpu'",
                 *VARIANTS[variant]]
    trainer = phasetrain.Trainer.from_config("regression", overrides, plugins=[clock])
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.fit()
    return (clock.end - clock.start) / args.steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/observers.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    names = list(VARIANTS)
    times: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:  # warm-up: imports (TensorBoard's too), allocator, caches
            run(name, args, f"{tmp}/warm")
        for r in range(args.repeats):
            for name in names[r % len(names):] + names[: r % len(names)]:
                times[name].append(run(name, args, f"{tmp}/{r}-{name}"))
    base = statistics.median(times["console"])
    print(f"{'observers':<28} {'median µs/step':>15} {'min':>9} {'max':>9} {'ratio':>7}")
    for name in names:
        xs = times[name]
        print(f"{name:<28} {statistics.median(xs) * 1e6:>15.1f} {min(xs) * 1e6:>9.1f} "
              f"{max(xs) * 1e6:>9.1f} {statistics.median(xs) / base:>7.3f}")
    result = {
        "steps": args.steps, "repeats": args.repeats, "log_every": args.log_every, "threads": args.threads,
        "us_per_step": {name: [x * 1e6 for x in xs] for name, xs in times.items()},
        "median_ratio_to_console": {name: statistics.median(xs) / base for name, xs in times.items()},
        "torch": torch.__version__,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
