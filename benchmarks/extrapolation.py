"""Does extrapolating the weight trajectory lower the loss? The question under hybrid training.

Trains a preset with plain steps. At eight points of the run it takes the displacement of the
weights over the last ``W`` real steps, ``D = w_t - w_(t-W)``, and measures the held-out eval
loss at ``w_t + s * D`` for several scales ``s`` (weights restored afterwards, so the run itself
is undisturbed). ``s = 1`` moves the weights as far as the last ``W`` real steps did; the gain is
compared with what the next real steps actually achieved.

    python benchmarks/extrapolation.py                        # regression, lm, burgers
    python benchmarks/extrapolation.py --tasks burgers --window 20

Prints, per task and probe point, the eval loss at each scale, and writes
benchmarks/results/extrapolation.json (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import torch

import phasetrain
from phasetrain import hookimpl

TASKS = {
    "regression": ("regression", 600, ["lr_schedule={use='constant'}"]),
    "lm": ("lm", 200, ["task.eval_batches=4", "lr_schedule={use='constant', warmup_steps=20}"]),
    "burgers": ("burgers", 800, ["schedule={use='single'}", "lr_schedule={use='constant'}", "sampler.n=2000",
                                 "task.eval_grid=[64]"]),
}
SCALES = (0.0, 0.5, 1.0, 2.0, 4.0)


class Probe:
    def __init__(self, steps: int, window: int) -> None:
        self.window = window
        self.at = {steps * i // 8 for i in range(1, 8) if steps * i // 8 >= window}
        self.history: dict[int, list[torch.Tensor]] = {}
        self.rows: list[dict] = []
        self.real: dict[int, float] = {}  # eval loss after real steps, at probe points + window

    @hookimpl
    def post_step(self, trainer, step: int) -> None:
        params = trainer.trainable
        self.history[step] = [p.detach().clone() for p in params]
        self.history.pop(step - self.window - 1, None)
        if step - self.window in self.at:
            self.real[step - self.window] = trainer.evaluate()["eval_loss"]
        if step not in self.at:
            return
        base = self.history[step]
        move = torch._foreach_sub(base, self.history[step - self.window])
        losses = []
        for s in SCALES:
            with torch.no_grad():
                torch._foreach_copy_(params, torch._foreach_add(base, move, alpha=s))
            losses.append(trainer.evaluate()["eval_loss"])
        with torch.no_grad():
            torch._foreach_copy_(params, base)
        self.rows.append({"step": step, "losses": losses})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--window", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/extrapolation.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for task in args.tasks:
        preset, steps, overrides = TASKS[task]
        probe = Probe(steps, args.window)
        trainer = phasetrain.Trainer.from_config(
            preset, [*overrides, f"run.steps={steps}", "run.eval_every=0", "run.checkpoint_every=0",
                     "observers.console.quiet=true", f"run.out_dir='runs/bench-extrapolation/{task}/{{version}}'"],
            plugins=[probe])
        with contextlib.redirect_stdout(io.StringIO()):
            trainer.fit()
        for row in probe.rows:
            row["after_window_real_steps"] = probe.real.get(row["step"])
        results[task] = {"preset": preset, "window": args.window, "scales": SCALES, "rows": probe.rows}
        print(f"\n{task}: eval loss at w_t + s (w_t - w_(t-{args.window})); last column: after {args.window} "
              "more real steps")
        print(f"{'step':>6} " + " ".join(f"{'s=' + format(s, 'g'):>9}" for s in SCALES) + f" {'real':>9}")
        for row in probe.rows:
            real = row["after_window_real_steps"]
            print(f"{row['step']:>6} " + " ".join(f"{v:>9.4g}" for v in row["losses"])
                  + f" {'-' if real is None else format(real, '.4g'):>9}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
