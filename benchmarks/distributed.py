"""torch.distributed on the CPU (gloo): data-parallel throughput, sharded training, sharded
checkpoints and elastic restarts. Three sections (``--sections``, all by default):

``ddp`` -- 1 vs 2 processes on the `lm` task, and the communication predicted steps save:

- Throughput: the same global batch trained by 1 process and by 2 processes under torchrun;
  steps/s from each run's own summary (rank 0), median over repeats.
- Communication per real step: a 2-process step minus a 1-process step on half the global batch
  (the same compute per rank), i.e. what gradient all-reduce and synchronisation cost.
- Saved by predicted steps: a 2-process hybrid run's predicted steps times that cost.

``sharding`` -- DDP (``local`` store) against FSDP (``sharded`` store) at 2 and 4 processes on an
`lm` scaled to about 10 M parameters (6 layers, 384 wide). A probe plugin inside every process
(``benchmarks/distributed_probe.py``) measures the bytes of parameters, gradients and optimizer
state the process holds (a DTensor counts its shard), every step's time, the final checkpoint's
write (``save_start`` to ``save_end``) and reading it back through the store. DDP and FSDP runs
alternate within each repeat; ratios are FSDP / DDP of medians.

``elastic`` -- a 2-process FSDP run under ``torchrun --max-restarts=1`` whose rank 1 is SIGKILLed
right after step K (between checkpoints): the time from the kill to the end of the first step of
the restarted group, and the steps lost (K minus the step it resumed from; at most
``checkpoint_every``).

    python benchmarks/distributed.py [--sections ddp,sharding,elastic] [--repeats 2] [--quick]

``--quick`` shortens everything (a smoke run of the sharding and elastic sections takes a few
minutes on 2 busy cores); the tables then say so.
"""

from __future__ import annotations

import argparse
import json
import os
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


def ddp_section(args: argparse.Namespace) -> None:
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
              "hybrid_comm_saved_s": statistics.median(predicted) * allreduce_s, "load": load()}
    write(Path(args.out), result)


# ---------------------------------------------------------------------------------------------
# Sharding and elastic restarts: runs with the probe plugin in every process
# ---------------------------------------------------------------------------------------------

LM10M = ["task.n_layer=6", "task.n_head=6", "task.n_embd=384", "task.block_size=64", "task.eval_batches=1",
         "run.device='cpu'", "run.threads=1", "lr_schedule={use='constant'}", "observers.jsonl.enabled=false",
         "run.eval_every=0"]
SETUPS = {"ddp": ["strategy='ddp'", "store='local'"],
          "fsdp": ["strategy={use='fsdp', wrap=['Block']}", "store='sharded'"]}


def probe_env(root: Path, out: Path) -> dict[str, str]:
    """An environment in which every phasetrain process loads the probe plugin and writes to ``out``."""
    info = root / "probe-1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: probe\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[phasetrain]\nprobe = distributed_probe\n")
    path = os.pathsep.join([str(root), str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "PROBE_OUT": str(out)}


def launch(nproc: int, sets: list[str], out: Path, env: dict[str, str], launcher: tuple[str, ...] = ()) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", *launcher, f"--nproc_per_node={nproc}",
           "-m", "phasetrain", "run", "lm"]
    for item in [*sets, f"run.out_dir='{out}'"]:
        cmd += ["--set", item]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env)
    if result.returncode != 0:
        raise SystemExit(f"run failed: {' '.join(cmd)}\n{result.stderr[-3000:]}")


def probes(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("probe-*.json"))]


def sharding_section(args: argparse.Namespace) -> None:
    steps, warm = (4, 1) if args.quick else (args.sharded_steps, 2)
    sets = [*LM10M, f"run.steps={steps}", "run.checkpoint_every=0", f"task.batch_size={args.sharded_batch}"]
    rows: dict[tuple[int, str], dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for r in range(args.repeats):
            for nproc in args.procs:
                for name, choice in SETUPS.items():  # alternating: ddp and fsdp see the same machine state
                    out = root / f"{name}-{nproc}-{r}"
                    launch(nproc, [*sets, *choice], out, probe_env(root / "site", out / "probe"))
                    got = probes(out / "probe")
                    row = rows.setdefault((nproc, name), {"bytes": [], "step_s": [], "save_s": [], "load_s": []})
                    row["bytes"].append(max(sum(p["bytes"].values()) for p in got))
                    row["parts"] = max((p["bytes"] for p in got), key=lambda b: sum(b.values()))
                    row["step_s"].append(statistics.median(max(p["step_s"][i] for p in got) for i in range(warm, steps)))
                    row["save_s"].append(max(p["save_s"] for p in got))
                    row["load_s"].append(max(p["load_s"] for p in got))
    table = []
    print(f"lm ~10 M parameters, global batch {args.sharded_batch}, {steps} steps, gloo on CPU, {args.repeats} repeat(s)"
          f"{' (--quick)' if args.quick else ''}; load: {load()}")
    print(f"{'procs':>5} {'setup':<5} {'MB/process':>11} {'params/grads/optim MB':>22} {'vs ddp':>7} "
          f"{'step s':>7} {'vs ddp':>7} {'save s':>7} {'load s':>7}")
    for (nproc, name), row in sorted(rows.items()):
        base = rows[(nproc, "ddp")]
        med = {k: statistics.median(v) for k, v in row.items() if k != "parts"}
        ref = {k: statistics.median(v) for k, v in base.items() if k != "parts"}
        parts = "/".join(f"{row['parts'][k] / 2**20:.1f}" for k in ("params", "grads", "optimizer"))
        entry = {"processes": nproc, "setup": name, "bytes_per_process": med["bytes"], "parts": row["parts"],
                 "bytes_ratio": med["bytes"] / ref["bytes"], "step_s": med["step_s"],
                 "steps_per_s_ratio": ref["step_s"] / med["step_s"], "save_s": med["save_s"], "load_s": med["load_s"],
                 "runs": {k: v for k, v in row.items() if k != "parts"}}
        table.append(entry)
        print(f"{nproc:>5} {name:<5} {med['bytes'] / 2**20:>11.1f} {parts:>22} {entry['bytes_ratio']:>7.2f} "
              f"{med['step_s']:>7.2f} {entry['steps_per_s_ratio']:>6.2f}x {med['save_s']:>7.2f} {med['load_s']:>7.2f}")
    print("vs ddp: bytes FSDP/DDP (expect about 1/N); steps/s FSDP/DDP. save: the final checkpoint "
          "(ddp: one file from rank 0, local store; fsdp: a shard per process, DCP); load: reading it back.")
    write(Path(args.out).with_name("distributed-sharding.json"),
          {"steps": steps, "global_batch": args.sharded_batch, "repeats": args.repeats, "quick": args.quick,
           "rows": table, "load": load()})


def elastic_section(args: argparse.Namespace) -> None:
    every, kill, steps = (2, 3, 5) if args.quick else (4, 6, 10)
    sets = [*LM10M, *SETUPS["fsdp"], f"run.steps={steps}", f"run.checkpoint_every={every}", "task.batch_size=8",
            "strategy.timeout_s=60"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for r in range(args.repeats):
            out = root / f"elastic-{r}"
            launch(2, [*sets], out, {**probe_env(root / "site", out / "probe"), "PROBE_KILL_AT": str(kill)},
                   launcher=("--max-restarts=1", "--monitor-interval=0.2"))
            got = probes(out / "probe")
            killed = next(p for p in got if "killed_at" in p)
            again = [p for p in got if p["attempt"] == 1]
            back = max(p["first_step_end"] for p in again)
            rows.append({"seconds_to_training_again": back - killed["killed_at"],
                         "steps_lost": killed["killed_after_step"] - again[0]["from_step"],
                         "resumed_from": again[0]["from_step"], "killed_after_step": killed["killed_after_step"]})
    med = statistics.median(r["seconds_to_training_again"] for r in rows)
    lost = max(r["steps_lost"] for r in rows)
    print(f"elastic: 2-process FSDP lm, checkpoint_every={every}, rank 1 SIGKILLed after step {kill}; "
          f"{args.repeats} repeat(s){' (--quick)' if args.quick else ''}; load: {load()}")
    print(f"  killed rank -> first step of the restarted group: {med:.1f} s (median); steps lost: {lost} "
          f"(<= checkpoint_every = {every})")
    write(Path(args.out).with_name("distributed-elastic.json"),
          {"checkpoint_every": every, "kill_after_step": kill, "repeats": args.repeats, "quick": args.quick,
           "runs": rows, "median_seconds_to_training_again": med, "max_steps_lost": lost, "load": load()})


def load() -> str:
    """The machine's load average, as ``uptime`` shows it: timings mean little without it."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores"


def write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default="ddp,sharding,elastic")
    p.add_argument("--steps", type=int, default=60, help="ddp section: steps per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=32, help="ddp section: global batch size")
    p.add_argument("--procs", type=lambda s: [int(x) for x in s.split(",")], default=[2, 4],
                   help="sharding section: process counts")
    p.add_argument("--sharded-steps", type=int, default=8)
    p.add_argument("--sharded-batch", type=int, default=8, help="sharding section: global batch size")
    p.add_argument("--quick", action="store_true", help="a short smoke run of every section")
    p.add_argument("--out", default="benchmarks/results/distributed.json")
    args = p.parse_args()
    if args.quick:
        args.repeats, args.steps = 1, 10
    sections = {"ddp": ddp_section, "sharding": sharding_section, "elastic": elastic_section}
    for name in args.sections.split(","):
        sections[name](args)


if __name__ == "__main__":
    main()
