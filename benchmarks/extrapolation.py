"""Does a nowcast jump pay after settling? The question under the ``nowcast`` schedule, asked
without its rules.

Trains a task with plain steps, keeping a snapshot every ``--every`` real steps and the whole
run state at a few points. From each such point the run is branched: no jump, and a jump by
each nowcaster (``linefit``, ``nowcaster``) ``k`` spacings ahead for several ``k``; every
branch then takes the same ``--settle`` real steps (same batches, same learning rate) and its
probe loss is measured (the batches the schedule's judge uses). Also printed: the forecast of
no jump that the schedule would have judged against (the probe loss before the jump moved by the
window's trend), so its error can be read off against the true no-jump branch.

    python benchmarks/extrapolation.py                       # regression, lm, burgers
    python benchmarks/extrapolation.py --tasks burgers --every 20 --settle 20
    python benchmarks/extrapolation.py --quick               # 2 points, k in (2, 8): a smoke test

Prints per task and point the probe loss after settling for each branch, relative to no jump
(< 1: the jump paid), and writes benchmarks/results/extrapolation.json (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import time
from pathlib import Path

import torch

import phasetrain
from phasetrain import hookimpl
from phasetrain.plugins.hybrid.nowcast import NowcastController, NowcastOptions
from phasetrain.plugins.hybrid.probe import probe_batches, probe_loss

TASKS = {
    "regression": ("regression", 1000, ["lr_schedule={use='constant'}", "run.threads=1"]),
    "lm": ("lm", 400, ["task.eval_batches=4", "lr_schedule={use='constant', warmup_steps=20}"]),
    "burgers": ("burgers", 1500, ["schedule={use='single'}", "lr_schedule={use='constant'}", "sampler.n=2000",
                                  "task.eval_grid=[64, 32]"]),
}
SNAPSHOTS = 5


class Keeper:
    """Snapshots every ``every`` real steps, training losses, and the run state at ``points``."""

    def __init__(self, every: int, points: set[int]) -> None:
        self.every, self.points = every, points
        self.snaps: dict[int, list[torch.Tensor]] = {}
        self.losses: list[float] = []
        self.states: dict[int, dict] = {}

    @hookimpl
    def post_step(self, trainer, step: int, metrics) -> None:
        done = step + 1
        self.losses.append(float(metrics["loss"]))
        if done % self.every == 0:
            self.snaps[done] = [p.detach().clone() for p in trainer.trainable]
        if done in self.points:
            self.states[done] = copy.deepcopy(trainer.state_dict())


def branch(preset: str, args: list[str], state: dict, settle: int, jump: list[torch.Tensor] | None,
           batches_count: int) -> tuple[float, float, dict]:
    """Probe loss before and after ``settle`` real steps from ``state``, with ``jump`` added to
    the weights first; also the task's evaluation at the end."""
    start = state["trainer"]["step"]
    trainer = phasetrain.Trainer.from_config(preset, [*args, f"run.steps={start + settle}"])
    trainer.load_state_dict(state)
    probe = probe_batches(trainer, batches_count)
    before = probe_loss(trainer, probe)
    if jump is not None:
        with torch.no_grad():
            torch._foreach_add_(trainer.trainable, jump)
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.fit()
    return before, probe_loss(trainer, probe), trainer.last_eval


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--every", type=int, default=20, help="real steps between snapshots")
    p.add_argument("--settle", type=int, default=20, help="real steps after a jump before it is scored")
    p.add_argument("--aheads", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    p.add_argument("--points", type=int, default=6, help="branch points per task")
    p.add_argument("--probe-batches", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--nowcaster-weights", default="", help="weights for the nowcaster (default: the shipped ones)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="benchmarks/results/extrapolation.json")
    args = p.parse_args()
    if args.quick:
        args.points, args.aheads = 2, [2.0, 8.0]
    torch.set_num_threads(args.threads)
    from phasetrain.plugins.hybrid.nowcaster import LearnedNowcaster, NowcasterOptions
    from phasetrain.plugins.hybrid.snapshots import LineFit, LineFitOptions

    models = {"linefit": LineFit(LineFitOptions(snapshots=SNAPSHOTS), None),
              "nowcaster": LearnedNowcaster(NowcasterOptions(weights=args.nowcaster_weights), None)}
    results = {}
    for task in args.tasks:
        preset, steps, overrides = TASKS[task]
        first = (SNAPSHOTS - 1) * args.every
        span = steps - args.settle - first
        points = sorted({first + (span * (i + 1) // (args.points + 1)) // args.every * args.every
                         for i in range(args.points)})
        base = [*overrides, "run.eval_every=0", "run.checkpoint_every=0", "observers.console.quiet=true",
                f"run.out_dir='runs/bench-extrapolation/{task}/{{version}}'"]
        if task == "burgers":
            args_probe = 1  # full batch: every probe batch is the same
        else:
            args_probe = args.probe_batches
        keeper = Keeper(args.every, set(points))
        trainer = phasetrain.Trainer.from_config(preset, [*base, f"run.steps={steps}"], plugins=[keeper])
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            trainer.fit()
        rows = []
        for t in points:
            history = [keeper.snaps[t - (SNAPSHOTS - 1 - i) * args.every] for i in range(SNAPSHOTS)]
            ctl = NowcastController(NowcastOptions(every=args.every, settle_steps=args.settle), snapshots=SNAPSHOTS)
            ctl.losses = keeper.losses[t - first: t]
            state = keeper.states[t]
            before, none, ev = branch(preset, base, state, args.settle, None, args_probe)
            row = {"step": t, "probe_before": before, "no_jump": none, "forecast": ctl.forecast(before),
                   "no_jump_eval": ev, "jumps": {}}
            for name, model in models.items():
                for k in args.aheads:
                    _, after, ev = branch(preset, base, state, args.settle, model.nowcast(history, k), args_probe)
                    row["jumps"][f"{name} k={k:g}"] = {"probe": after, "eval": ev}
            rows.append(row)
        results[task] = {"preset": preset, "steps": steps, "every": args.every, "settle": args.settle,
                         "snapshots": SNAPSHOTS, "rows": rows, "seconds": time.perf_counter() - started}
        names = list(rows[0]["jumps"]) if rows else []
        print(f"\n{task}: probe loss {args.settle} real steps after the branch point, relative to no jump "
              f"(< 1: the jump paid); jumps k x {args.every} steps ahead")
        print(f"{'step':>6} {'no jump':>9} {'forecast':>9} " + " ".join(f"{n:>15}" for n in names))
        for row in rows:
            print(f"{row['step']:>6} {row['no_jump']:>9.4g} {row['forecast'] / row['no_jump']:>9.3f} "
                  + " ".join(f"{row['jumps'][n]['probe'] / row['no_jump']:>15.3f}" for n in names))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\nforecast column: the no-jump forecast the judge uses, relative to the true no-jump branch.\nwrote {args.out}")


if __name__ == "__main__":
    main()
