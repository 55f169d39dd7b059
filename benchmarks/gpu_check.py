"""One command that runs every GPU path of phasetrain on a machine with one NVIDIA GPU and says
which work: ``make gpu-check`` (or ``python benchmarks/gpu_check.py``). It prints a table and
writes JSON (``benchmarks/results/gpu_check.json``) and exits 1 if any check FAILs. A failing
check is a broken GPU path (an exception, a non-finite loss, results that disagree with the
reference run); a *goal* that is missed (predict-phase memory, overlap) is reported, not failed.
Without a CUDA device it fails at once: it never skips a GPU path quietly.

Checks (sized to finish well within 10 minutes on one GPU; not yet timed on one, since no GPU
was available when this was written -- the JSON records how long each check took):

``precision``   lm under fp32, bf16 and fp16 (loss scaling), and the Adam -> L-BFGS schedule under
                ``per_phase`` (fp16 for Adam, fp32 for L-BFGS): finite, falling losses.
``throughput``  lm (6 layers, 384 wide, context 256) steps/s under fp32 and bf16.
``offload``     hybrid lm whose Predict phase parks the optimizer state in pinned host memory:
                the final weights equal those of the run without offload (offload then restore
                is the identity); restore wait of ``cpu_pinned`` (prefetched on a side stream) vs
                ``cpu`` (synchronous) and the overlap that gives; device memory during Predict
                against the parameters' size (goal: at most parameters + 10 %).
``nvml``        NVML's reading of this process's memory against ``torch.cuda.max_memory_allocated``
                and ``memory_reserved`` (NVML must see at least what the allocator reserved), and
                the ``memory`` observer reporting from NVML rather than its fallback.
``distributed`` ``ddp`` and ``fsdp`` (nccl, sharded store, and fsdp with bf16 mixed precision)
                under ``torchrun --nproc_per_node=1``: they run, save, and end at the loss of the
                same run without torchrun.
``pinn``        the burgers PINN: milliseconds per step on the GPU and on the CPU; the first
                step's loss agrees.

``--device cpu`` is a self-test of this script on a machine without a GPU (the test suite runs
it): the checks that can run on the CPU do, those that need CUDA say ``n/a``. It is not a GPU
check and never reports one.

    python benchmarks/gpu_check.py [--only precision,offload] [--quick] [--out benchmarks/results/gpu_check.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from phasetrain import hookimpl

PASS, FAIL, NA = "pass", "FAIL", "n/a"

# ---------------------------------------------------------------------------------------------
# Verdicts: plain arithmetic on measurements, tested without a GPU (tests/test_gpu_check.py)
# ---------------------------------------------------------------------------------------------


def overlap(sync_wait_s: float, prefetched_wait_s: float) -> float:
    """The fraction of a synchronous restore that prefetching hid: 1 - wait / synchronous, in [0, 1]."""
    if sync_wait_s <= 0:
        return 0.0
    return min(1.0, max(0.0, 1.0 - prefetched_wait_s / sync_wait_s))


def predict_memory_goal(device_bytes: float, param_bytes: float, margin: float = 0.10) -> bool:
    """Whether device memory during Predict stays within the parameters plus ``margin``."""
    return device_bytes <= param_bytes * (1.0 + margin)


def nvml_sees_the_allocator(nvml_bytes: float | None, reserved_bytes: float) -> str:
    """'' when NVML's reading of the process covers what the caching allocator reserved; else why not."""
    if nvml_bytes is None:
        return "NVML gave no reading for this process"
    if nvml_bytes < reserved_bytes:
        return f"NVML sees {nvml_bytes / 2**20:.0f} MB, less than the {reserved_bytes / 2**20:.0f} MB torch reserved"
    return ""


def falling(losses: list[float]) -> str:
    """'' when every loss is finite and the last is below the first; else what is wrong."""
    if not losses:
        return "no loss was recorded"
    if not all(math.isfinite(x) for x in losses):
        return f"non-finite loss at step {next(i for i, x in enumerate(losses) if not math.isfinite(x)) + 1}"
    if not losses[-1] < losses[0]:
        return f"the loss did not fall ({losses[0]:.4g} -> {losses[-1]:.4g})"
    return ""


def row(check: str, case: str, status: str = PASS, note: str = "", **numbers: Any) -> dict[str, Any]:
    return {"check": check, "case": case, "status": status, "note": note, "numbers": numbers}


def verdict(check: str, case: str, problem: str, **numbers: Any) -> dict[str, Any]:
    return row(check, case, FAIL if problem else PASS, problem, **numbers)


# ---------------------------------------------------------------------------------------------
# Running phasetrain in this process
# ---------------------------------------------------------------------------------------------


class Recorder:
    """A plugin: every step's loss and duration, and a callback after each step."""

    def __init__(self, device: torch.device, each: Callable[[Any, int, dict], None] | None = None):
        self.losses: list[float] = []
        self.step_s: list[float] = []
        self._t0, self._cuda, self._each = 0.0, device.type == "cuda", each

    def _sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize()

    @hookimpl(tryfirst=True)
    def pre_step(self) -> None:
        self._sync()
        self._t0 = time.perf_counter()

    @hookimpl(trylast=True)
    def post_step(self, trainer: Any, step: int, metrics: dict) -> None:
        self._sync()
        self.step_s.append(time.perf_counter() - self._t0)
        loss = metrics.get("loss")
        self.losses.append(float(loss) if loss is not None else float("nan"))
        if self._each is not None:
            self._each(trainer, step, metrics)


def train(preset: str, overrides: list[str], ctx: Ctx, each: Any = None, plugins: tuple = ()) -> tuple[Any, Recorder]:
    import phasetrain

    recorder = Recorder(ctx.device, each)
    out = Path(tempfile.mkdtemp(dir=ctx.tmp))
    trainer = phasetrain.Trainer.from_config(
        preset, [*overrides, f"run.device='{ctx.device.type}'", f"run.out_dir='{out}'", "observers.console.quiet=true",
                 "run.checkpoint_every=0"], plugins=[recorder, *plugins])
    try:
        trainer.fit()
    finally:
        trainer.strategy.close()
    return trainer, recorder


class Ctx:
    def __init__(self, device: torch.device, quick: bool, tmp: Path):
        self.device, self.quick, self.tmp = device, quick, tmp
        self.cuda = device.type == "cuda"

    def steps(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def lm(self, big: bool = False) -> list[str]:
        """The lm task's size: the self-test on the CPU checks the plumbing, not speed."""
        return (LM_BIG if big else LM_SMALL) if self.cuda else LM_TINY


LM_SMALL = ["task.n_layer=2", "task.n_head=4", "task.n_embd=128", "task.block_size=64", "task.batch_size=32",
            "task.eval_batches=1", "lr_schedule={use='constant'}"]
LM_TINY = ["task.n_layer=1", "task.n_head=2", "task.n_embd=32", "task.block_size=16", "task.batch_size=8",
           "task.eval_batches=1", "lr_schedule={use='constant'}"]
LM_BIG = ["task.n_layer=6", "task.n_head=6", "task.n_embd=384", "task.block_size=256", "task.batch_size=32",
          "task.eval_batches=1", "lr_schedule={use='constant'}"]


# ---------------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------------


def check_precision(ctx: Ctx) -> list[dict]:
    rows, steps = [], ctx.steps(60, 12)
    for policy in ("fp32", "bf16", "fp16"):
        trainer, rec = train("lm", [*ctx.lm(), f"run.steps={steps}", f"precision='{policy}'"], ctx)
        numbers = {"final_loss": rec.losses[-1], "ms_per_step": 1e3 * statistics.median(rec.step_s)}
        if policy == "fp16":
            numbers["loss_scale"] = trainer.outcome.metrics.get("loss_scale")
            numbers["skipped_steps"] = trainer.precision.skipped_steps
        rows.append(verdict("precision", f"lm {policy}", falling(rec.losses), **numbers))
    stages = ctx.steps(40, 10)
    trainer, rec = train("regression-lbfgs", [
        f"run.steps={stages + 5}", "task.n_train=512",
        f"schedule.stages=[{{name='adam', steps={stages}}}, {{name='lbfgs', optimizer={{use='lbfgs', max_iter=5}}}}]",
        "precision={use='per_phase', default='fp16', phases={lbfgs='fp32'}}"], ctx)
    rows.append(verdict("precision", "per_phase fp16 adam -> fp32 lbfgs", falling(rec.losses),
                        final_loss=rec.losses[-1], lbfgs_steps=5))
    return rows


def check_throughput(ctx: Ctx) -> list[dict]:
    steps, warm = ctx.steps(30, 6), ctx.steps(5, 2)
    rates = {}
    for policy in ("fp32", "bf16"):
        _trainer, rec = train("lm", [*ctx.lm(big=True), f"run.steps={steps}",
                                     f"precision='{policy}'"], ctx)
        rates[policy] = 1.0 / statistics.median(rec.step_s[warm:])
    return [row("throughput", "lm steps/s fp32 vs bf16", fp32=rates["fp32"], bf16=rates["bf16"],
                bf16_speedup=rates["bf16"] / rates["fp32"])]


HYBRID = ["schedule={use='hybrid', warmup_steps=8, min_full_steps=4, confidence_threshold=0.0, force_confidence=1.0, "
          "initial_predict_steps=6, max_predict_steps=6, correct_steps=4, loss_check_every=3}",
          "dynamics={use='linear', window=2}"]


def check_offload(ctx: Ctx) -> list[dict]:
    steps = ctx.steps(60, 30)
    base = [*ctx.lm(big=True), f"run.steps={steps}", *HYBRID]
    finals, waits, predict_bytes, params, parked = {}, {}, {}, {}, {}
    for mode in ("none", "cpu", "cpu_pinned"):
        timing = PhaseTiming(ctx.device)

        def each(trainer: Any, _step: int, _metrics: dict, mode: str = mode) -> None:
            if trainer.phase.name == "predict":
                if ctx.cuda:
                    predict_bytes[mode] = max(predict_bytes.get(mode, 0), torch.cuda.memory_allocated())
                offload = trainer.component("offload")
                parked[mode] = parked.get(mode, True) and (mode == "none" or offload.offloaded)

        extra = [] if mode == "none" else [f"offload={{use='{mode}', phases=['predict']}}"]
        trainer, _rec = train("lm", [*base, *extra], ctx, each=each, plugins=(timing, timing.after))
        finals[mode] = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
        waits[mode] = statistics.median(timing.leaving_predict) if timing.leaving_predict else float("nan")
        params[mode] = sum(p.numel() * p.element_size() for p in trainer.trainable)
        if trainer.schedule.predicted_steps == 0:
            return [row("offload", "hybrid lm", FAIL, "no predicted step ran: the check measured nothing")]
    rows = []
    for mode in ("cpu", "cpu_pinned"):
        same = all(torch.equal(finals[mode][k], finals["none"][k]) for k in finals["none"])
        problem = ("" if same else "final weights differ from the run without offload") or \
                  ("" if parked.get(mode) else "optimizer state was not in host memory during Predict")
        numbers: dict[str, Any] = {"restore_wait_ms": 1e3 * waits[mode]}
        if ctx.cuda:
            numbers["predict_device_mb"] = predict_bytes.get(mode, 0) / 2**20
            numbers["params_mb"] = params[mode] / 2**20
            numbers["predict_goal_met"] = predict_memory_goal(predict_bytes.get(mode, 0), params[mode])
        rows.append(verdict("offload", f"hybrid lm, offload {mode}", problem, **numbers))
    hidden = overlap(waits["cpu"], waits["cpu_pinned"])
    rows.append(row("offload", "pinned restore overlap", PASS if ctx.cuda else NA,
                    "" if ctx.cuda else "needs CUDA streams", overlap=hidden,
                    sync_restore_ms=1e3 * waits["cpu"], pinned_wait_ms=1e3 * waits["cpu_pinned"]))
    return rows


class PhaseTiming:
    """Times ``phase_enter`` out of Predict, from the first implementation (this one) to the last
    (:class:`PhaseTimingEnd`): the offload strategy restores, or waits for, the optimizer state
    in between."""

    def __init__(self, device: torch.device):
        self.leaving_predict: list[float] = []
        self.t0, self.cuda = 0.0, device.type == "cuda"
        self.after = PhaseTimingEnd(self)

    @hookimpl(tryfirst=True)
    def phase_enter(self, phase: Any, previous: Any) -> None:
        if previous is not None and previous.name == "predict":
            self.t0 = time.perf_counter()


class PhaseTimingEnd:
    def __init__(self, timing: PhaseTiming):
        self.timing = timing

    @hookimpl(trylast=True)
    def phase_enter(self, phase: Any, previous: Any) -> None:
        if previous is not None and previous.name == "predict":
            if self.timing.cuda:
                torch.cuda.synchronize()
            self.timing.leaving_predict.append(time.perf_counter() - self.timing.t0)


def check_nvml(ctx: Ctx) -> list[dict]:
    if not ctx.cuda:
        return [row("nvml", "NVML vs torch allocator", NA, "needs an NVIDIA GPU")]
    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
    torch.cuda.reset_peak_memory_stats()
    trainer, rec = train("lm", [*ctx.lm(big=True), f"run.steps={ctx.steps(20, 6)}", "observers.memory={every=1}"], ctx)
    mine = [p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid == os.getpid()]
    nvml_bytes = mine[0] if mine and mine[0] is not None else None
    reserved, peak = torch.cuda.memory_reserved(), torch.cuda.max_memory_allocated()
    problem = nvml_sees_the_allocator(nvml_bytes, reserved)
    if not problem and "mem_used_mb" not in trainer.outcome.metrics:
        problem = "the memory observer did not report mem_used_mb from NVML"
    return [verdict("nvml", "NVML vs torch allocator", problem, nvml_process_mb=(nvml_bytes or 0) / 2**20,
                    reserved_mb=reserved / 2**20, max_allocated_mb=peak / 2**20,
                    observer_used_mb=trainer.outcome.metrics.get("mem_used_mb"))]


def check_distributed(ctx: Ctx) -> list[dict]:
    import phasetrain

    steps = ctx.steps(20, 6)
    common = [*ctx.lm(), f"run.steps={steps}", "run.threads=1", "run.log_every=1"]
    backend = "nccl" if ctx.cuda else "gloo"
    fsdp = [f"strategy={{use='fsdp', backend='{backend}', wrap=['Block']}}", "store='sharded'"]
    cases = {"ddp": ([f"strategy={{use='ddp', backend='{backend}'}}"], "fp32", 1e-3),
             "fsdp": (fsdp, "fp32", 1e-3),
             "fsdp bf16": ([*fsdp, "precision='bf16'"], "bf16", 5e-2)}  # bf16 rounds differently sharded
    references = {policy: train("lm", [*common, f"precision='{policy}'"], ctx)[1].losses[-1] for policy in ("fp32", "bf16")}
    rows = []
    for name, (extra, policy, tolerance) in cases.items():
        out = Path(tempfile.mkdtemp(dir=ctx.tmp))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "phasetrain",
               "run", "lm"]
        for item in [*common, *extra, f"run.device='{ctx.device.type}'", f"run.out_dir='{out}'"]:
            cmd += ["--set", item]
        started = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines() or ["(no output)"]
            rows.append(row("distributed", f"{name} ({backend})", FAIL, lines[-1][:200]))
            continue
        saved = phasetrain.load_checkpoint(out)
        last, reference = _last_loss(out), references[policy]
        problem = "" if abs(last - reference) <= tolerance * abs(reference) else \
            f"final loss {last:.5g} vs {reference:.5g} without torchrun"
        if not problem and saved["meta"]["step"] != steps:
            problem = f"the last checkpoint is of step {saved['meta']['step']}, not {steps}"
        rows.append(verdict("distributed", f"{name} ({backend})", problem, final_loss=last,
                            reference_loss=reference, seconds=seconds))
    return rows


def _last_loss(out: Path) -> float:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r.get("kind") == "train"][-1]["loss"]


def check_pinn(ctx: Ctx) -> list[dict]:
    steps = ctx.steps(30, 6)
    result: dict[str, Any] = {}
    for device in ([ctx.device, torch.device("cpu")] if ctx.cuda else [torch.device("cpu")]):
        sub = Ctx(device, ctx.quick, ctx.tmp)
        _trainer, rec = train("burgers", [f"run.steps={steps}", "run.eval_every=0"], sub)
        result[device.type] = rec
    cpu = result["cpu"]
    numbers: dict[str, Any] = {"cpu_ms_per_step": 1e3 * statistics.median(cpu.step_s[1:])}
    problem = falling(cpu.losses) if steps > 1 else ""
    if ctx.cuda:
        gpu = result["cuda"]
        numbers["gpu_ms_per_step"] = 1e3 * statistics.median(gpu.step_s[1:])
        numbers["gpu_speedup"] = numbers["cpu_ms_per_step"] / numbers["gpu_ms_per_step"]
        if not math.isclose(gpu.losses[0], cpu.losses[0], rel_tol=1e-3):
            problem = f"first-step loss {gpu.losses[0]:.6g} on the GPU vs {cpu.losses[0]:.6g} on the CPU"
    return [verdict("pinn", "burgers step, GPU vs CPU", problem, **numbers)]


CHECKS: dict[str, Callable[[Ctx], list[dict]]] = {
    "precision": check_precision, "throughput": check_throughput, "offload": check_offload,
    "nvml": check_nvml, "distributed": check_distributed, "pinn": check_pinn,
}


# ---------------------------------------------------------------------------------------------
# Running, reporting, failing loudly
# ---------------------------------------------------------------------------------------------


def run_checks(checks: dict[str, Callable[[Ctx], list[dict]]], ctx: Ctx) -> list[dict]:
    """Every check's rows; a check that raises is one FAIL row with the error (the others still run)."""
    rows: list[dict] = []
    for name, check in checks.items():
        started = time.perf_counter()
        try:
            got = check(ctx)
        except Exception as exc:  # a broken GPU path: reported, never hidden
            last = traceback.extract_tb(exc.__traceback__)[-1]
            got = [row(name, "(the check itself)", FAIL, f"{type(exc).__name__}: {exc} ({Path(last.filename).name}:"
                                                          f"{last.lineno})"[:300])]
        for r in got:
            r["seconds"] = time.perf_counter() - started
        rows.extend(got)
        if ctx.cuda:
            torch.cuda.empty_cache()
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'check':<12} {'case':<38} {'status':<6} numbers / note", "-" * 100]
    for r in rows:
        numbers = ", ".join(f"{k}={_fmt(v)}" for k, v in r["numbers"].items())
        text = "; ".join(x for x in (numbers, r["note"]) if x)
        lines.append(f"{r['check']:<12} {r['case']:<38} {r['status']:<6} {text}")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def exit_code(rows: list[dict]) -> int:
    return 1 if any(r["status"] == FAIL for r in rows) or not rows else 0


def describe_gpu() -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "memory_gb": props.total_memory / 2**30, "capability": f"{props.major}.{props.minor}",
            "torch": torch.__version__, "cuda": torch.version.cuda}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="", help="comma-separated checks (default: all)")
    p.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu: a self-test of this script without a GPU (not a GPU check)")
    p.add_argument("--out", default="benchmarks/results/gpu_check.json")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(CHECKS)
    if unknown := [n for n in names if n not in CHECKS]:
        print(f"gpu_check: unknown check(s) {', '.join(unknown)} (known: {', '.join(CHECKS)})", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: FAIL: no CUDA device is visible (torch.cuda.is_available() is False); this check needs "
              "one NVIDIA GPU. Nothing was skipped quietly: no GPU path was checked.", file=sys.stderr)
        return 1
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Ctx(torch.device(args.device), args.quick, Path(tmp))
        rows = run_checks({n: CHECKS[n] for n in names}, ctx)
    code = exit_code(rows)
    print(table(rows))
    failed = [r for r in rows if r["status"] == FAIL]
    verdict_line = f"{len(failed)} of {len(rows)} FAILED" if failed else f"all {len(rows)} passed"
    print(f"gpu_check on {args.device}{' (self-test)' if args.device == 'cpu' else ''}: {verdict_line} "
          f"in {time.perf_counter() - started:.0f} s")
    result = {"device": args.device, "self_test": args.device == "cpu", "quick": args.quick,
              "gpu": describe_gpu() if args.device == "cuda" else None, "rows": rows, "exit_code": code,
              "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
