"""Memory and step time of the lm task under each precision policy, gradient accumulation,
activation checkpointing and optimizer-state offload.

Every configuration runs in a fresh subprocess, so the process's peak resident memory belongs to
that configuration alone; configurations are interleaved over ``--repeats`` rounds and the table
reports medians. On a GPU the peak is ``torch.cuda.max_memory_allocated``; without one the GPU
columns say "unmeasured" and the peak is the growth of resident memory during training (the
kernel's high-water mark, reset before training where Linux allows it).

The offload configuration runs a staged schedule whose middle stage is named ``predict`` and
takes forward-only steps (as predicted steps do), with ``offload = "cpu_pinned"``; it reports the
optimizer-state bytes moved and the memory just before and just after the state left.

    python benchmarks/memory.py [--sizes small,big] [--steps 20] [--repeats 2]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SIZES = {
    "small": ["task.n_layer=2", "task.n_head=4", "task.n_embd=128", "task.block_size=64", "task.batch_size=32"],
    "big": ["task.n_layer=6", "task.n_head=8", "task.n_embd=384", "task.block_size=256", "task.batch_size=32"],
}
LAYERS = {"small": 2, "big": 6}
BATCH = 32
ACCUM = 4

# name -> overrides (a function of the size); "fp32" is the baseline of the ratios.
CONFIGS = {
    "fp32": lambda size: ["precision='fp32'"],
    "bf16": lambda size: ["precision='bf16'"],
    "fp16": lambda size: ["precision='fp16'"],
    f"fp32 accum{ACCUM}": lambda size: [f"task.batch_size={BATCH // ACCUM}", f"run.grad_accum_steps={ACCUM}"],
    "fp32 ckpt": lambda size: [f"task.checkpoint_activations={list(range(LAYERS[size]))}"],
    "bf16 ckpt": lambda size: ["precision='bf16'", f"task.checkpoint_activations={list(range(LAYERS[size]))}"],
    "fp32 offload": lambda size: ["offload={use='cpu_pinned', phases=['predict']}"],
}
WARMUP = 3  # steps excluded from the medians


# ---------------------------------------------------------------------------------------------
# The child: one configuration, one process
# ---------------------------------------------------------------------------------------------


def _status_kb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def _reset_high_water_mark() -> bool:
    """Linux resets VmHWM (peak resident memory) when 5 is written to /proc/self/clear_refs."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(spec: dict) -> dict:
    import phasetrain
    from phasetrain import hookimpl

    cuda = torch.cuda.is_available() and spec["device"] != "cpu"
    device = "cuda" if cuda else "cpu"
    steps = spec["steps"]
    overrides = [
        *SIZES[spec["size"]], *CONFIGS[spec["config"]](spec["size"]),
        f"run.steps={steps}", f"run.out_dir='{spec['out_dir']}'", f"run.device='{device}'",
        "run.checkpoint_every=0", "run.eval_every=0", "observers.console.quiet=true",
    ]
    offload = "offload" in spec["config"]
    if offload:
        first, predict = steps // 2, steps // 4
        overrides.append(
            f"schedule={{use='staged', stages=[{{name='train', steps={first}}}, "
            f"{{name='predict', steps={predict}}}, {{name='after'}}]}}"
        )

    def device_mb() -> float:
        if cuda:
            torch.cuda.synchronize()
            return torch.cuda.memory_allocated() / 2**20
        return (_status_kb("VmRSS") or 0.0) / 1024

    class Probe:
        def __init__(self) -> None:
            self.times: list[tuple[str, float]] = []
            self.t0 = 0.0
            self.peak_hwm_kb: float | None = None
            self.peak_cuda = 0.0
            self.moved: dict = {}

        @hookimpl
        def pre_step(self) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        @hookimpl(trylast=True)
        def post_step(self, trainer, step) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.times.append((trainer.state.phase, time.perf_counter() - self.t0))
            if step + 1 == steps:  # before the final evaluation and checkpoint
                self.peak_hwm_kb = _status_kb("VmHWM")
                self.peak_cuda = torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0

        @hookimpl(tryfirst=True)  # before the offload strategy moves the state out
        def phase_enter(self, phase) -> None:
            if phase.name == "predict":
                self.moved["before_mb"] = device_mb()

    class PredictAfter:
        """The reading after the state left (one hook implementation per object and hook)."""

        def __init__(self, probe: Probe) -> None:
            self.probe = probe

        @hookimpl(trylast=True)
        def phase_enter(self, phase) -> None:
            if phase.name == "predict":
                self.probe.moved["after_mb"] = device_mb()

    class Predicted:
        """Forward-only steps in 'predict', as a dynamics model's predicted steps would be."""

        @hookimpl
        def run_step(self, trainer, phase):
            if phase.name != "predict":
                return None
            with torch.no_grad(), trainer.precision.autocast():
                loss = trainer.task.loss(trainer.model, trainer.task.batch(trainer.state.batches))
            return {"loss": loss}

    probe = Probe()
    plugins = [probe, PredictAfter(probe)] + ([Predicted()] if offload else [])
    trainer = phasetrain.Trainer.from_config("lm", overrides, plugins=plugins)
    gc.collect()
    reset = _reset_high_water_mark()
    rss0_kb = _status_kb("VmRSS") or 0.0
    maxrss0_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.fit()
    real = [t for phase, t in probe.times[WARMUP:] if phase != "predict"]
    out = {
        "size": spec["size"],
        "config": spec["config"],
        "device": device,
        "step_ms": 1000 * statistics.median(real),
        "peak_rss_growth_mb": ((probe.peak_hwm_kb or 0.0) - rss0_kb) / 1024 if reset else
        (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss0_kb) / 1024,
        "hwm_reset": reset,
        "peak_device_mb": probe.peak_cuda if cuda else None,
        "final_loss": float(trainer.outcome.metrics["loss"]),
    }
    if offload:
        stats = trainer.component("offload").stats
        after = [t for phase, t in probe.times if phase == "after"]
        out.update(
            offload_bytes_out=stats.bytes_out, offload_bytes_in=stats.bytes_in,
            offload_prefetches=stats.prefetches,
            offload_before_mb=probe.moved.get("before_mb"), offload_after_mb=probe.moved.get("after_mb"),
            first_step_after_predict_ms=1000 * after[0] if after else None,
        )
    return out


# ---------------------------------------------------------------------------------------------
# The parent: interleave configurations over repeats, one subprocess each
# ---------------------------------------------------------------------------------------------


def run_child(spec: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, timeout=1800
    )
    if proc.returncode:
        raise RuntimeError(f"{spec['size']}/{spec['config']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="small", help="comma-separated: small, big")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu"])
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "memory.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    sizes = args.sizes.split(",")
    configs = args.configs.split(",")
    runs: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for size in sizes:
                for config in configs:
                    spec = {"size": size, "config": config, "steps": args.steps, "device": args.device,
                            "out_dir": str(Path(tmp) / f"{size}-{config.replace(' ', '_')}-{repeat}")}
                    runs.setdefault((size, config), []).append(run_child(spec))
                    print(f"  round {repeat + 1}/{args.repeats}: {size} {config} done", file=sys.stderr)

    cuda = any(r["device"] == "cuda" for rs in runs.values() for r in rs)
    rows = []
    for (size, config), rs in runs.items():
        med = lambda key: statistics.median(r[key] for r in rs) if rs[0].get(key) is not None else None  # noqa: E731
        row = {"size": size, "config": config, "step_ms": med("step_ms"),
               "peak_rss_growth_mb": med("peak_rss_growth_mb"), "peak_device_mb": med("peak_device_mb"),
               "final_loss": med("final_loss"), "repeats": len(rs), "runs": rs}
        for key in ("offload_bytes_out", "offload_before_mb", "offload_after_mb", "first_step_after_predict_ms"):
            if key in rs[0]:
                row[key] = med(key)
        rows.append(row)
    for row in rows:
        base = next(r for r in rows if r["size"] == row["size"] and r["config"] == "fp32")
        row["time_ratio"] = row["step_ms"] / base["step_ms"]
        row["rss_ratio"] = (row["peak_rss_growth_mb"] / base["peak_rss_growth_mb"]
                            if base["peak_rss_growth_mb"] else None)
        if cuda:
            row["device_ratio"] = row["peak_device_mb"] / base["peak_device_mb"]

    device = torch.cuda.get_device_name() if cuda else "cpu"
    note = ("peak device memory = torch.cuda.max_memory_allocated during training" if cuda else
            "no CUDA device: GPU figures are unmeasured; peak = growth of resident memory during training "
            f"(VmHWM reset before training); machine shared with other jobs (load average "
            f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}), so timings were taken under load")
    header = f"{'size':<6} {'config':<14} {'step ms':>8} {'x fp32':>7} {'peak RSS+ MB':>13} {'x fp32':>7} {'peak GPU MB':>12}  notes"
    print(f"lm task, {args.steps} steps per run (first {WARMUP} excluded), median of {args.repeats} runs, device {device}")
    print(header)
    print("-" * len(header))
    for row in rows:
        gpu = f"{row['peak_device_mb']:.1f}" if row["peak_device_mb"] is not None else "unmeasured"
        notes = ""
        if "offload_bytes_out" in row:
            unit = "GPU" if cuda else "RSS"
            notes = (f"moved {row['offload_bytes_out'] / 2**20:.2f} MB of optimizer state; {unit} "
                     f"{row['offload_before_mb']:.1f} -> {row['offload_after_mb']:.1f} MB at predict; "
                     f"first step after predict {row['first_step_after_predict_ms']:.1f} ms")
        rss_ratio = f"{row['rss_ratio']:.2f}" if row["rss_ratio"] is not None else "-"
        print(f"{row['size']:<6} {row['config']:<14} {row['step_ms']:>8.1f} {row['time_ratio']:>7.2f} "
              f"{row['peak_rss_growth_mb']:>13.1f} {rss_ratio:>7} {gpu:>12}  {notes}")
    print(note)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "memory", "task": "lm", "steps": args.steps, "warmup": WARMUP, "repeats": args.repeats,
        "device": device, "cuda": cuda, "torch": torch.__version__, "note": note,
        "command": "python benchmarks/memory.py " + " ".join(sys.argv[1:]), "rows": rows,
    }, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
