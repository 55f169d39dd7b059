"""benchmarks/gpu_check.py without a GPU: its verdicts, its report, and that it fails loudly.

The GPU paths themselves run only on a machine with an NVIDIA GPU (``make gpu-check``); here the
script's own logic is checked, and its ``--device cpu`` self-test drives the same phasetrain runs
on the CPU, so a check that cannot even build its run is caught before anyone borrows a GPU.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


@given(sync=st.floats(0, 10), wait=st.floats(0, 20))
def test_overlap_is_the_hidden_fraction_of_a_synchronous_restore(sync, wait):
    hidden = gpu_check.overlap(sync, wait)
    assert 0.0 <= hidden <= 1.0
    if sync > 0 and wait <= sync:
        assert hidden == pytest.approx(1 - wait / sync)
    if wait >= sync:
        assert hidden == 0.0


def test_verdicts_on_measurements():
    assert gpu_check.predict_memory_goal(109e6, 100e6) and not gpu_check.predict_memory_goal(111e6, 100e6)
    assert gpu_check.nvml_sees_the_allocator(None, 1) == "NVML gave no reading for this process"
    assert "less than the 2 MB torch reserved" in gpu_check.nvml_sees_the_allocator(2**20, 2 * 2**20)
    assert gpu_check.nvml_sees_the_allocator(3 * 2**20, 2 * 2**20) == ""
    assert gpu_check.falling([2.0, 1.0]) == ""
    assert gpu_check.falling([1.0, 2.0]) == "the loss did not fall (1 -> 2)"
    assert gpu_check.falling([2.0, float("nan"), 1.0]) == "non-finite loss at step 2"
    assert gpu_check.falling([]) == "no loss was recorded"


def test_a_broken_check_fails_the_command_and_the_report_says_where(tmp_path):
    def broken(ctx):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def fine(ctx):
        return [gpu_check.row("fine", "case", speedup=2.0)]

    ctx = gpu_check.Ctx(torch.device("cpu"), quick=True, tmp=tmp_path)
    rows = gpu_check.run_checks({"broken": broken, "fine": fine}, ctx)  # the second still runs
    assert [(r["check"], r["status"]) for r in rows] == [("broken", "FAIL"), ("fine", "pass")]
    assert "RuntimeError: CUDA error: an illegal memory access" in rows[0]["note"]
    assert "test_gpu_check.py" in rows[0]["note"]  # where it broke
    text = gpu_check.table(rows)
    assert "FAIL" in text and "speedup=2" in text
    assert gpu_check.exit_code(rows) == 1 and gpu_check.exit_code(rows[1:]) == 0
    assert gpu_check.exit_code([]) == 1  # nothing checked is no pass


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_check_fails_loudly_and_skips_nothing(tmp_path):
    out = tmp_path / "gpu.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "FAIL: no CUDA device is visible" in result.stderr
    assert not out.exists()  # no report that could pass for a GPU check


@pytest.mark.slow
def test_the_cpu_self_test_builds_and_runs_every_check_that_can_run_without_cuda(tmp_path):
    out = tmp_path / "self.json"
    code = gpu_check.main(["--device", "cpu", "--quick", "--only", "precision,offload,nvml,pinn",
                           "--out", str(out)])
    report = json.loads(out.read_text())
    assert code == 0, gpu_check.table(report["rows"])
    assert report["self_test"] and report["gpu"] is None
    statuses = {(r["check"], r["case"]): r["status"] for r in report["rows"]}
    assert statuses[("nvml", "NVML vs torch allocator")] == "n/a"
    assert statuses[("offload", "pinned restore overlap")] == "n/a"
    assert {s for k, s in statuses.items() if k[0] in ("precision", "offload", "pinn") and "overlap" not in k[1]} == {"pass"}
