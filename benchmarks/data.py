"""The supervised data path: phasetrain's DataLoader path vs a hand-written DataLoader loop, and
the ``digits`` preset's held-out accuracy.

Part 1, speed. Both variants train the ``digits`` preset's CNN (same initial weights) on its
training split (1,437 images, batches of 64: 23 steps an epoch) with Adam at a constant learning
rate, on one torch thread, for ``--epochs`` epochs, with ``num_workers`` 0 and 2:

- *phasetrain*: ``Trainer.fit`` of the ``supervised`` task (its resumable batch sampler, the
  per-batch worker seeding, the device move, every hook); ``[nonfinite] use = "off"``, so the
  kernel and the data path alone are compared (as in benchmarks/overhead.py), no evaluation, no
  checkpoint inside the timed span (``train_start`` to the end of the last step);
- *hand-written*: ``for x, y in DataLoader(dataset, shuffle=True, persistent_workers=...)`` with
  ``zero_grad``, forward, ``cross_entropy``, backward, ``step``.

The variants alternate within each repeat (the order flips every repeat); the table shows the
median epoch time of each and the median of the per-repeat ratios phasetrain / hand-written
(target <= 1.05).

Part 2, quality: the ``digits`` preset as shipped (600 steps), its held-out accuracy (target
>= 97 %), steps and training time; the same for the ``breast-cancer`` preset (which stops early).

    python benchmarks/data.py [--repeats 7] [--epochs 6] [--quick] [--skip-digits]

Writes benchmarks/results/data.json. Run ``uptime`` beside it: timings depend on the load.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import statistics
import time
import tomllib
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

import phasetrain
from phasetrain import hookimpl
from phasetrain.plugins.supervised.examples import DigitsCNN, digits

ROOT = Path(__file__).resolve().parent.parent
BATCH, LR, SEED = 64, 3e-3, 0


class _Clock:
    """From train_start to the end of the last step."""

    def __init__(self) -> None:
        self.start = self.end = 0.0

    @hookimpl(trylast=True)
    def train_start(self) -> None:
        self.start = time.perf_counter()

    @hookimpl(trylast=True)
    def post_step(self) -> None:
        self.end = time.perf_counter()


def preset(name: str) -> dict:
    return tomllib.loads((ROOT / "plugins" / "presets" / f"{name}.toml").read_text())


def run_phasetrain(steps: int, workers: int, out: Path) -> tuple[float, float]:
    config = preset("digits")
    config.pop("best_checkpoints")
    config["task"].update(val_data="", metrics=[], loader={"batch_size": BATCH, "num_workers": workers})
    config["run"].update(steps=steps, out_dir=str(out), eval_every=0, checkpoint_every=0, device="cpu", threads=1)
    config.update(optimizer={"use": "adam", "lr": LR}, lr_schedule={"use": "constant"}, nonfinite={"use": "off"},
                  observers={"console": {"quiet": True}, "jsonl": {"enabled": False}})
    clock = _Clock()
    trainer = phasetrain.Trainer.from_config(config, plugins=[clock])
    with contextlib.redirect_stdout(io.StringIO()):
        outcome = trainer.fit()
    return clock.end - clock.start, outcome.metrics["loss"]


def run_handwritten(steps: int, workers: int) -> tuple[float, float]:
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    loader = DataLoader(digits("train"), batch_size=BATCH, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(SEED))
    model.train()
    start, done, loss = time.perf_counter(), 0, torch.zeros(())
    while done < steps:
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    seconds = time.perf_counter() - start
    del loader
    return seconds, loss.item()


def speed(args: argparse.Namespace, out: Path) -> dict:
    per_epoch = math.ceil(len(digits("train")) / BATCH)
    steps = per_epoch * args.epochs
    results: dict = {}
    for workers in (0, 2):
        times: dict[str, list[float]] = {"phasetrain": [], "hand-written": []}
        losses: dict[str, float] = {}
        for repeat in range(args.repeats):
            order = ["phasetrain", "hand-written"] if repeat % 2 == 0 else ["hand-written", "phasetrain"]
            for name in order:
                if name == "phasetrain":
                    seconds, loss = run_phasetrain(steps, workers, out / f"w{workers}-{repeat}")
                else:
                    seconds, loss = run_handwritten(steps, workers)
                times[name].append(seconds / args.epochs)
                losses[name] = loss
        ratios = [p / h for p, h in zip(times["phasetrain"], times["hand-written"], strict=True)]
        results[f"num_workers={workers}"] = {
            "epoch_s": {k: statistics.median(v) for k, v in times.items()},
            "ratio_median": statistics.median(ratios), "ratios": ratios, "epoch_times": times,
            "final_loss": losses, "steps": steps,
        }
    return results


def quality(name: str, out: Path) -> dict:
    trainer = phasetrain.Trainer.from_config(preset(name), [f"run.out_dir='{out / name}'", "run.device='cpu'",
                                                          "observers.console.quiet=true"])
    with contextlib.redirect_stdout(io.StringIO()):
        outcome = trainer.fit()
    return {"accuracy": outcome.eval["accuracy"], "f1": outcome.eval["f1"], "steps": outcome.steps,
            "status": outcome.status, "train_seconds": outcome.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="3 repeats of 2 epochs")
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data.json"))
    parser.add_argument("--work", default="runs/bench-data")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.epochs = 3, 2
    work = Path(args.work)
    load = os.getloadavg()
    report: dict = {"settings": {"repeats": args.repeats, "epochs": args.epochs, "batch_size": BATCH,
                                 "load_before": load}, "speed": speed(args, work)}
    print(f"epoch time, digits CNN, batch {BATCH}, {args.epochs} epochs x {args.repeats} repeats "
          f"(load average {load[0]:.2f})")
    print(f"{'num_workers':<12} {'phasetrain s':>13} {'hand-written s':>15} {'ratio (median)':>15}  target <= 1.05")
    for key, row in report["speed"].items():
        print(f"{key.split('=')[1]:<12} {row['epoch_s']['phasetrain']:>13.4f} {row['epoch_s']['hand-written']:>15.4f} "
              f"{row['ratio_median']:>15.3f}")
    if not args.skip_digits:
        print(f"\n{'preset':<14} {'accuracy':>9} {'f1':>7} {'steps':>6} {'train s':>8}  status")
        for name in ("digits", "breast-cancer"):
            report[name] = found = quality(name, work)
            print(f"{name:<14} {found['accuracy']:>9.4f} {found['f1']:>7.4f} {found['steps']:>6} "
                  f"{found['train_seconds']:>8.1f}  {found['status']}")
        print("target: digits held-out accuracy >= 0.97")
    report["settings"]["load_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
