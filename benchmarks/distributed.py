"""Data-parallel throughput on the CPU (gloo): 1 vs 2 processes on the `lm` task, and the
communication that predicted steps save in a hybrid run.

- Throughput: the same global batch trained by 1 process and by 2 processes under torchrun;
  steps/s from each run's own summary (rank 0), median over repeats.
- Communication per real step: a 2-process step minus a 1-process step on half the global batch
  (the same compute per rank), i.e. what gradient all-reduce and synchronisation cost.
- Saved by predicted steps: a 2-process hybrid run's predicted steps times that cost.

    python benchmarks/distributed.py [--steps 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SUMMARY = re.compile(r"time\s+([\d.]+) s \(([\d.]+) steps/s\)")


def run(nproc: int, sets: list[str], out: Path) -> tuple[float, str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = (launcher if nproc > 1 else [sys.executable]) + ["-m", "phasetrain", "run", "lm"]
    for item in [*sets, f"run.out_dir='{out}'", "run.checkpoint_every=0", "run.device='cpu'",
                 "run.threads=1", "observers.jsonl.enabled=false", "task.eval_batches=1"]:
        cmd += ["--set", item]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:
        raise SystemExit(f"run failed: {' '.join(cmd)}\n{result.stderr[-2000:]}")
    match = SUMMARY.search(result.stdout)
    return float(match.group(2)), result.stdout


ALLREDUCE = """
import os, statistics, sys, time, torch, torch.distributed as dist
dist.init_process_group("gloo")
numel = int(sys.argv[1])
grads = torch.randn(numel)
times = []
for i in range(60):
    dist.barrier()
    t0 = time.perf_counter()
    dist.all_reduce(grads)
    times.append(time.perf_counter() - t0)
if dist.get_rank() == 0:
    print("ALLREDUCE", statistics.median(times[10:]))
dist.destroy_process_group()
"""


def allreduce_seconds(numel: int, tmp: Path) -> float:
    """Median time of one gloo all-reduce of ``numel`` float32 values between 2 processes."""
    script = tmp / "allreduce.py"
    script.write_text(ALLREDUCE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(numel)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300).stdout
    return float(next(line.split()[1] for line in out.splitlines() if line.startswith("ALLREDUCE")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=32, help="global batch size")
    p.add_argument("--out", default="benchmarks/results/distributed.json")
    args = p.parse_args()
    base = [f"run.steps={args.steps}", "lr_schedule={use='constant'}"]
    rates: dict[str, list[float]] = {"1 process": [], "2 processes": [], "1 process, half batch": []}
    hybrid_rates, predicted = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for r in range(args.repeats):
            rates["1 process"].append(run(1, [*base, f"task.batch_size={args.batch}"], root / f"a{r}")[0])
            rates["2 processes"].append(run(2, [*base, f"task.batch_size={args.batch}"], root / f"b{r}")[0])
            rates["1 process, half batch"].append(
                run(1, [*base, f"task.batch_size={args.batch // 2}"], root / f"c{r}")[0])
            rate, _ = run(2, [*base, f"task.batch_size={args.batch}", "schedule={use='hybrid', warmup_steps=10, "
                                   "min_full_steps=5, confidence_threshold=0.0}", "dynamics={use='linear', window=3}"],
                               root / f"d{r}")
            hybrid_rates.append(rate)
            import phasetrain

            predicted.append(phasetrain.load_checkpoint(root / f"d{r}")["plugins"]["hybrid"]["predicted_steps"])
        import phasetrain

        numel = sum(p.numel() for p in phasetrain.load_model(root / "a0").parameters())
        allreduce_s = allreduce_seconds(numel, root)
    med = {k: statistics.median(v) for k, v in rates.items()}
    comm_s = 1 / med["2 processes"] - 1 / med["1 process, half batch"]
    print(f"{'setup':<24} {'steps/s (median)':>16}")
    for k, v in med.items():
        print(f"{k:<24} {v:>16.2f}")
    print(f"speed-up 2 vs 1 process (same global batch {args.batch}): {med['2 processes'] / med['1 process']:.2f}x")
    print(f"communication + sync per real step (2 procs - 1 proc at half batch): {comm_s * 1e3:.1f} ms")
    print(f"one gloo all-reduce of the gradients ({numel:,} floats), measured directly: {allreduce_s * 1e3:.2f} ms")
    saved = statistics.median(predicted) * allreduce_s
    print(f"hybrid, 2 processes: {statistics.median(hybrid_rates):.2f} steps/s; {statistics.median(predicted):.0f} of "
          f"{args.steps} steps predicted, saving about {saved:.2f} s of communication per run "
          "(predicted steps do no gradient all-reduce)")
    result = {"steps": args.steps, "global_batch": args.batch, "repeats": args.repeats,
              "steps_per_s": rates, "median_steps_per_s": med, "comm_per_real_step_s": comm_s,
              "hybrid_2proc_steps_per_s": hybrid_rates, "hybrid_predicted_steps": predicted,
              "allreduce_s": allreduce_s, "parameters": numel,
              "hybrid_comm_saved_s": statistics.median(predicted) * allreduce_s}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
