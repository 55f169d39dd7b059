"""Train the ``nowcaster``'s weights from trajectories that phasetrain records itself.

One command, reproducible (fixed seeds, one CPU thread)::

    python -m phasetrain.plugins.hybrid.train_nowcaster          # see the data card for its time
    python -m phasetrain.plugins.hybrid.train_nowcaster --quick  # a smoke test, not for shipping

1. **Record.** Runs of a family of tasks (``FAMILY``: regression MLPs of several shapes,
   activations and optimizers; poisson2d, heat1d and wave1d PINNs), each with a
   :class:`Recorder` that keeps the trainable weights every ``RECORD_EVERY`` real steps (at
   most ``PER_TENSOR`` scalars of each tensor, a fixed random subset). ``burgers``, ``lm`` and
   ``helmholtz2d`` are never trained on: they are recorded only to validate (``HELD_OUT``).
2. **Windows.** From every trajectory, windows of K snapshots at spacings of 1, 2 and 4
   records, with the true future at the horizons ``HORIZONS``; the features are those the
   plugin computes at run time (``nowcaster.features``).
3. **Train** the per-parameter MLP with a Huber loss on the normalised displacements.
4. **Validate** on runs with seeds the training never saw and on the held-out tasks: the error
   of the predicted displacement in weight space, relative to the true one (1 = no better than
   not moving), for the network, the line fit (``linefit``) and the last difference repeated.
5. **Write** ``data/nowcaster.pt`` (the weights, their settings and a check: a history with
   the predictions the weights gave, which the tests reproduce) and the data card
   ``data/nowcaster.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import phasetrain
from phasetrain import hookimpl
from phasetrain.plugins.hybrid.nowcaster import CLIP, HORIZONS, Net, build_net, features, nowcast_with
from phasetrain.plugins.hybrid.snapshots import line_coefficients

SNAPSHOTS = 5
HIDDEN = 64
RECORD_EVERY = 5  # real steps between recorded weights
SPACINGS = (1, 2, 4)  # window spacings, in records (5, 10 and 20 real steps)
PER_TENSOR = 1024  # scalars kept per tensor
TARGET_CLIP = 40.0  # normalised displacements beyond this are clipped (a scalar that starts moving)

_PINN = ["task.hidden=32", "task.depth=4", "sampler.n=1000", "task.n_initial=128", "task.n_boundary=128",
         "task.eval_grid=[16]", "schedule={use='single'}", "task.dtype='float32'", "task.activation='tanh'",
         "task.first_layer_scale=1.0", "task.weights={}"]
_REG = ["run.threads=1"]

# name: (preset, overrides, steps); every entry is run for the seeds of its split.
FAMILY = {
    "regression-tanh": ("regression", _REG + [], 1000),
    "regression-relu-deep": ("regression", _REG + ["task.activation='relu'", "task.hidden=32", "task.depth=3",
                                                   "optimizer.lr=1e-3", "lr_schedule={use='constant'}"], 1000),
    "regression-gelu-wide": ("regression", _REG + ["task.activation='gelu'", "task.hidden=128", "task.batch_size=256",
                                                   "optimizer={use='adamw', lr=2e-3, weight_decay=0.01}"], 800),
    "regression-sgd": ("regression", _REG + ["optimizer={use='sgd', lr=0.05, momentum=0.9}",
                                             "lr_schedule={use='constant'}"], 1000),
    "regression-silu-full": ("regression", _REG + ["task.activation='silu'", "task.in_dim=4", "task.batch_size=0",
                                                   "lr_schedule={use='constant'}"], 800),
    "poisson2d": ("poisson2d", _PINN + ["lr_schedule={use='constant'}"], 800),
    "heat1d": ("heat1d", _PINN + ["lr_schedule={use='cosine'}"], 800),
    "wave1d": ("wave1d", _PINN + ["optimizer.lr=1e-3", "lr_schedule={use='constant'}"], 800),
}
TRAIN_SEEDS, VALID_SEEDS = (0, 1, 2), (10,)
HELD_OUT = {
    "burgers": ("burgers", ["sampler.n=2000", "task.eval_grid=[16]", "schedule={use='single'}",
                            "lr_schedule={use='constant'}"], 800),
    "lm": ("lm", ["task.eval_batches=1", "lr_schedule={use='constant', warmup_steps=20}"], 300),
    "helmholtz2d": ("helmholtz2d", ["sampler.n=1000", "task.eval_grid=[16]", "schedule={use='single'}",
                                    "lr_schedule={use='constant'}"], 800),
}


class Recorder:
    """Keeps a fixed subset of every trainable tensor every ``RECORD_EVERY`` real steps."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.index: list[torch.Tensor] = []
        self.records: list[list[torch.Tensor]] = []

    @hookimpl
    def train_start(self, trainer) -> None:
        g = torch.Generator().manual_seed(self.seed)
        self.index = [torch.randperm(p.numel(), generator=g)[:PER_TENSOR] for p in trainer.trainable]
        self._keep(trainer)

    @hookimpl
    def post_step(self, trainer, step: int) -> None:
        if (step + 1) % RECORD_EVERY == 0:
            self._keep(trainer)

    def _keep(self, trainer) -> None:
        self.records.append([p.detach().reshape(-1)[i].float().cpu() for p, i in zip(trainer.trainable, self.index)])

    def trajectory(self) -> list[torch.Tensor]:
        """Per tensor, (T, n) float32: the recorded values over time."""
        return [torch.stack(parts) for parts in zip(*self.records)]


def record(name: str, preset: str, overrides: list[str], steps: int, seed: int, cache: Path) -> list[torch.Tensor]:
    path = cache / f"{name}-seed{seed}-{steps}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    recorder = Recorder(seed)
    args = [*overrides, f"run.steps={steps}", f"run.seed={seed}", "run.eval_every=0", "run.checkpoint_every=0",
            "observers.console.quiet=true", f"run.out_dir='{cache / 'runs' / name}'"]
    trainer = phasetrain.Trainer.from_config(preset, args, plugins=[recorder])
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.fit()
    trajectory = recorder.trajectory()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(trajectory, path)
    return trajectory


def windows(trajectory: list[torch.Tensor], g: torch.Generator, per_spacing: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features (M, F), normalised targets (M, H) and scales (M,) of up to ``per_spacing``
    window ends per spacing, all recorded scalars of every tensor."""
    xs, ys, ss = [], [], []
    steps = trajectory[0].shape[0]
    for m in SPACINGS:
        first, last = (SNAPSHOTS - 1) * m, steps - 1 - int(HORIZONS[-1]) * m
        if last < first:
            continue
        ends = torch.randperm(last - first + 1, generator=g)[:per_spacing] + first
        for e in ends.tolist():
            for values in trajectory:  # (T, n) one tensor
                hist = values[e - (SNAPSHOTS - 1) * m: e + 1: m]  # (K, n)
                x, s = features(hist[:-1] - hist[-1])
                future = torch.stack([values[e + int(h) * m] - values[e] for h in HORIZONS], dim=1)  # (n, H)
                y = torch.where(s[:, None] > 0, future / s.clamp_min(1e-30)[:, None], torch.zeros_like(future))
                keep = s > 0
                xs.append(x[keep]), ys.append(y[keep].clamp(-TARGET_CLIP, TARGET_CLIP)), ss.append(s[keep])
    return torch.cat(xs), torch.cat(ys), torch.cat(ss)


def train(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> Net:
    torch.manual_seed(seed)
    net = Net(SNAPSHOTS, HIDDEN)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    batch = 4096
    total = epochs * math.ceil(len(x) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=total, pct_start=0.1)
    loss_fn = nn.HuberLoss(delta=1.0)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        running = 0.0
        for i in range(0, len(x), batch):
            idx = perm[i: i + batch]
            loss = loss_fn(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += float(loss.detach()) * len(idx)
        print(f"  epoch {epoch + 1}/{epochs}: Huber loss {running / len(x):.4f}", flush=True)
    net.eval()
    return net


def errors(net: Net, trajectory: list[torch.Tensor], g: torch.Generator, per_spacing: int) -> dict[str, list[float]]:
    """Per method and horizon: the weight-space error of the predicted displacement relative to
    the true one, ``|D_pred - D|^2 / |D|^2`` over all recorded scalars, median over windows."""
    out: dict[str, list[list[float]]] = {m: [[] for _ in HORIZONS] for m in ("nowcaster", "linefit", "last step")}
    steps = trajectory[0].shape[0]
    for m in SPACINGS:
        first, last = (SNAPSHOTS - 1) * m, steps - 1 - int(HORIZONS[-1]) * m
        if last < first:
            continue
        for e in (torch.randperm(last - first + 1, generator=g)[:per_spacing] + first).tolist():
            history = [[v[e - (SNAPSHOTS - 1 - i) * m] for v in trajectory] for i in range(SNAPSHOTS)]
            for j, h in enumerate(HORIZONS):
                true = torch.cat([v[e + int(h) * m] - v[e] for v in trajectory]).double()
                norm = float(true.square().sum())
                if norm == 0:
                    continue
                coef = line_coefficients(SNAPSHOTS, h)
                preds = {
                    "nowcaster": torch.cat([d.reshape(-1) for d in nowcast_with(net, history, h)]),
                    "linefit": sum(c * torch.cat(w) for c, w in zip(coef, history)) - torch.cat(history[-1]),
                    "last step": h * (torch.cat(history[-1]) - torch.cat(history[-2])),
                }
                for method, pred in preds.items():
                    out[method][j].append(float((pred.double() - true).square().sum()) / norm)
    return {k: [statistics.median(v) if v else float("nan") for v in per_h] for k, per_h in out.items()}


def check_case(net: Net) -> dict:
    """A fixed history (a drifting, noisy walk of two tensors) and the predictions the weights
    give for it; the tests load the shipped file and must reproduce them."""
    g = torch.Generator().manual_seed(1234)
    shapes = [(7, 5), (11,)]
    drift = [torch.randn(s, generator=g) * 1e-3 for s in shapes]
    start = [torch.randn(s, generator=g) for s in shapes]
    history = [[w + i * d + 3e-4 * torch.randn(s, generator=g) for w, d, s in zip(start, drift, shapes)]
               for i in range(SNAPSHOTS)]
    aheads = [1.0, 3.0, 8.0]
    return {"history": history, "ahead": aheads,
            "expected": [nowcast_with(net, history, a) for a in aheads]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(Path(__file__).parent / "data"), help="folder for nowcaster.pt and nowcaster.md")
    p.add_argument("--cache", default="runs/nowcaster-data", help="recorded trajectories (reused when present)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--windows", type=int, default=40, help="window ends per trajectory and spacing")
    p.add_argument("--quick", action="store_true", help="one seed, few windows, 2 epochs: a smoke test")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    started, cpu_started, load_before = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    cache = Path(args.cache)
    train_seeds = TRAIN_SEEDS[:1] if args.quick else TRAIN_SEEDS
    epochs, per_spacing = (2, 8) if args.quick else (args.epochs, args.windows)
    print("recording the family ...", flush=True)
    g = torch.Generator().manual_seed(0)
    xs, ys, counts = [], [], {}
    for name, (preset, overrides, steps) in FAMILY.items():
        for seed in train_seeds:
            x, y, _ = windows(record(name, preset, overrides, steps, seed, cache), g, per_spacing)
            xs.append(x), ys.append(y)
            counts[name] = counts.get(name, 0) + 1
            print(f"  {name} seed {seed}: {len(x):,} samples", flush=True)
    x, y = torch.cat(xs), torch.cat(ys)
    print(f"training on {len(x):,} samples from {sum(counts.values())} trajectories ...", flush=True)
    net = train(x, y, epochs, seed=0)
    net = build_net({"snapshots": SNAPSHOTS, "hidden": HIDDEN, "state": net.state_dict()})
    print("validating ...", flush=True)
    gv = torch.Generator().manual_seed(1)
    validation = {}
    for name, (preset, overrides, steps) in FAMILY.items():
        for seed in VALID_SEEDS:
            validation[f"{name} (seed {seed})"] = errors(net, record(name, preset, overrides, steps, seed, cache), gv, 10)
    for name, (preset, overrides, steps) in HELD_OUT.items():
        validation[f"{name} (held out)"] = errors(net, record(name, preset, overrides, steps, 0, cache), gv, 10)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    saved = {"format": 1, "snapshots": SNAPSHOTS, "hidden": HIDDEN, "horizons": list(HORIZONS), "clip": CLIP,
             "state": net.state_dict(), "check": check_case(net)}
    torch.save(saved, out / "nowcaster.pt")
    took = (f"{(time.perf_counter() - started) / 60:.1f} minutes ({(time.process_time() - cpu_started) / 60:.1f} "
            f"minutes of CPU; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after)")
    text = card(counts, len(x), epochs, per_spacing, validation, took, args.quick)
    (out / "nowcaster.md").write_text(text)
    print(text)
    print(f"wrote {out / 'nowcaster.pt'} and {out / 'nowcaster.md'}")


def card(counts: dict[str, int], samples: int, epochs: int, per_spacing: int, validation: dict, took: str,
         quick: bool) -> str:
    lines = [
        "# Data card: the `nowcaster` weights",
        "",
        "Written by `python -m phasetrain.plugins.hybrid.train_nowcaster"
        + (" --quick` (a smoke test: do not ship these)" if quick else "`") + f" in {took} on one CPU thread, "
        f"recording included (torch {torch.__version__}, Python {platform.python_version()}). The same command "
        "writes the same weights bit for bit.",
        "",
        "**Model.** One MLP shared by every scalar weight: "
        f"{2 * (SNAPSHOTS - 1) + 1} inputs (the last {SNAPSHOTS} snapshots of the scalar, relative values and "
        f"differences normalised by its RMS difference, and that scale against its tensor's), two hidden layers "
        f"of {HIDDEN} GELU units, outputs at {', '.join(f'{h:g}' for h in HORIZONS)} spacings ahead "
        "(see `nowcaster.py`).",
        "",
        f"**Training data**: trajectories recorded by phasetrain (weights every {RECORD_EVERY} real steps, at most "
        f"{PER_TENSOR} scalars per tensor), windows at spacings of "
        f"{', '.join(str(m * RECORD_EVERY) for m in SPACINGS)} real steps, {per_spacing} window ends per trajectory "
        f"and spacing: {samples:,} samples, {epochs} epochs. Seeds {', '.join(map(str, TRAIN_SEEDS))}.",
        "",
        "| task | preset | overrides | real steps | trajectories |",
        "|---|---|---|---|---|",
    ]
    for name, (preset, overrides, steps) in FAMILY.items():
        shown = ", ".join(f"`{o}`" for o in overrides if o not in _PINN and o not in _REG) or "-"
        shared = " (PINN settings below)" if preset != "regression" else ""
        lines.append(f"| {name} | {preset}{shared} | {shown} | {steps} | {counts.get(name, 0)} |")
    lines += [
        "",
        f"PINN settings: {', '.join(f'`{o}`' for o in _PINN)}.",
        "",
        f"**Never trained on**: {', '.join(f'`{n}`' for n in HELD_OUT)} (the benchmark's tasks and its unseen task).",
        "",
        "**Validation**: error of the predicted displacement in weight space relative to the true one, "
        "`|D_pred - D|^2 / |D|^2` over the recorded scalars, median over windows (1.0: no better than not "
        "moving). Family tasks with a seed never trained on, and the held-out tasks.",
        "",
        "| trajectory | method | " + " | ".join(f"{h:g} ahead" for h in HORIZONS) + " |",
        "|---|---|" + "---|" * len(HORIZONS),
    ]
    for name, methods in validation.items():
        for method, values in methods.items():
            lines.append(f"| {name} | {method} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
