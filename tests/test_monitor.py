"""The memory observer: one line and process memory without a GPU; NVML fields, thresholds and
the emergency checkpoint with a fake NVML."""

from __future__ import annotations

import io
import types

import pytest
import torch

import phasetrain
from phasetrain import hookimpl
from phasetrain.errors import ConfigError
from phasetrain.plugins.monitor import MemoryMonitor, MemoryOptions

MB = 1024 * 1024
SMALL = ["task.n_train=128", "task.n_eval=64", "task.hidden=8", "task.batch_size=32"]


class Metrics:
    def __init__(self):
        self.steps = []

    @hookimpl(trylast=True)  # where the loggers sit
    def post_step(self, step, metrics):
        self.steps.append((step + 1, dict(metrics)))


class FakeNVMLError(Exception):
    pass


class FakeNvml:
    """The parts of pynvml the monitor uses; ``used`` is a list of fractions, one per reading."""

    NVMLError = FakeNVMLError

    def __init__(self, used, total_mb=1000, fail_init=False, fail_after=None):
        self.used, self.total = list(used), total_mb * MB
        self.fail_init, self.fail_after = fail_init, fail_after
        self.reads = 0
        self.shut = False

    def nvmlInit(self):
        if self.fail_init:
            raise FakeNVMLError("Driver Not Loaded")

    def nvmlShutdown(self):
        self.shut = True

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("gpu", index)

    def nvmlDeviceGetMemoryInfo(self, handle):
        if self.fail_after is not None and self.reads >= self.fail_after:
            raise FakeNVMLError("GPU is lost")
        frac = self.used[min(self.reads, len(self.used) - 1)]
        self.reads += 1
        return types.SimpleNamespace(used=int(frac * self.total), total=self.total, free=self.total - int(frac * self.total))

    def nvmlDeviceGetUtilizationRates(self, handle):
        return types.SimpleNamespace(gpu=42, memory=7)


class FakeAllocator:
    """torch.cuda's allocator statistics, driven by the test."""

    def __init__(self):
        self.allocated = 0
        self.peak = 0
        self.resets = 0

    def memory_allocated(self, device=None):
        return self.allocated

    def max_memory_allocated(self, device=None):
        return self.peak

    def reset_peak_memory_stats(self, device=None):
        self.resets += 1
        self.peak = self.allocated


def fit(quiet, monitor, *extra, steps=8):
    metrics = Metrics()
    trainer = phasetrain.Trainer.from_config(
        "regression", [*quiet, *SMALL, f"run.steps={steps}", *extra], plugins=[monitor, metrics]
    )
    trainer.fit()
    return trainer, metrics


def test_without_a_gpu_it_prints_one_line_and_reports_process_memory(quiet, capsys):
    metrics = Metrics()
    trainer = phasetrain.Trainer.from_config(
        "regression", [*quiet, *SMALL, "run.steps=9", "observers.memory.every=3"], plugins=[metrics]
    )
    trainer.fit()
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "memory" in line] == [
        "phasetrain: memory: no NVIDIA GPU in this run (device cpu); reporting process memory as mem_rss_mb"
    ]
    for step, m in metrics.steps:
        mem = {k for k in m if k.startswith("mem_")}
        assert mem == ({"mem_rss_mb", "mem_maxrss_mb"} if step % 3 == 0 else set())
        if mem:
            assert 0 < m["mem_rss_mb"] <= m["mem_maxrss_mb"]


def test_nvml_fields_reach_the_loggers_every_n_steps(quiet):
    nvml, alloc = FakeNvml([0.25]), FakeAllocator()
    alloc.allocated = alloc.peak = 3 * MB
    out = io.StringIO()
    monitor = MemoryMonitor(MemoryOptions(every=2), nvml=nvml, allocator=alloc, stream=out)
    _, metrics = fit(quiet, monitor, steps=6)
    logged = [(s, m) for s, m in metrics.steps if "mem_used_mb" in m]
    assert [s for s, _ in logged] == [2, 4, 6]
    m = logged[0][1]
    assert m["mem_used_mb"] == pytest.approx(250, rel=1e-6) and m["mem_total_mb"] == 1000
    assert m["mem_used_frac"] == pytest.approx(0.25) and m["gpu_util"] == 42
    assert m["mem_alloc_mb"] == m["mem_peak_mb"] == 3
    assert "mem_rss_mb" not in m
    # Below every threshold: only the summary at the end; NVML closed at the end.
    assert out.getvalue().splitlines() == ["phasetrain: memory: peak allocated per phase: train 3.0 MB"]
    assert nvml.shut


def test_warning_once_and_one_emergency_checkpoint(quiet):
    # Readings at steps 1..8 (every=1): cross warn at 3, emergency at 5, stay high afterwards.
    nvml = FakeNvml([0.5, 0.6, 0.91, 0.92, 0.98, 0.99, 0.99, 0.5])
    out = io.StringIO()
    monitor = MemoryMonitor(MemoryOptions(every=1, warn_fraction=0.9, emergency_fraction=0.97), nvml=nvml, stream=out)
    trainer, _ = fit(quiet, monitor, "run.checkpoint_every=0")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "above warn_fraction 0.9" in lines[0] and "at step 3" in lines[0]
    assert "above emergency_fraction 0.97" in lines[1] and "at step 5" in lines[1]
    names = sorted(p.name for p in (trainer.out_dir / "checkpoints").iterdir())
    assert names == ["step-00000005", "step-00000008"]  # the emergency one and the final one
    assert str(monitor.emergency_checkpoint).endswith("step-00000005")


@pytest.mark.parametrize("warn, emergency, reading, lines", [(0.0, 0.0, 0.999, 0), (0.5, 0.0, 0.6, 1), (0.0, 0.5, 0.6, 1)])
def test_thresholds_switch_off_at_zero(quiet, warn, emergency, reading, lines):
    out = io.StringIO()
    monitor = MemoryMonitor(MemoryOptions(every=1, warn_fraction=warn, emergency_fraction=emergency),
                            nvml=FakeNvml([reading]), stream=out)
    trainer, _ = fit(quiet, monitor, steps=3)
    assert len(out.getvalue().splitlines()) == lines
    assert (monitor.emergency_checkpoint is not None) == bool(emergency)


def test_nvml_that_does_not_start_leaves_one_line_and_process_memory(quiet):
    out = io.StringIO()
    monitor = MemoryMonitor(MemoryOptions(every=1), nvml=FakeNvml([0.5], fail_init=True), stream=out)
    _, metrics = fit(quiet, monitor, steps=3)
    assert len(out.getvalue().splitlines()) == 1 and "no NVIDIA GPU" in out.getvalue()
    assert all("mem_rss_mb" in m for _s, m in metrics.steps)


def test_nvml_that_stops_answering_is_switched_off_with_one_line(quiet):
    out = io.StringIO()
    monitor = MemoryMonitor(MemoryOptions(every=1), nvml=FakeNvml([0.5], fail_after=2), stream=out)
    _, metrics = fit(quiet, monitor, steps=5)
    assert out.getvalue().count("NVML stopped answering") == 1
    assert ["mem_used_mb" in m for _s, m in metrics.steps] == [True, True, False, False, False]
    assert all("mem_rss_mb" in m for _s, m in metrics.steps[2:])


def test_peak_allocated_is_kept_per_phase_and_reset_on_phase_enter(quiet):
    alloc = FakeAllocator()

    class Allocates:
        """Allocation rises during 'adam'; entering 'predict' frees most of it (as an offload
        strategy does, before the monitor resets its peak)."""

        @hookimpl(tryfirst=True)
        def phase_enter(self, phase):
            if phase.name == "predict":
                alloc.allocated = 4 * MB

        @hookimpl
        def pre_step(self, trainer, step):
            if trainer.state.phase == "adam":
                alloc.allocated = (10 + step) * MB
                alloc.peak = max(alloc.peak, alloc.allocated)

    out = io.StringIO()
    monitor = MemoryMonitor(MemoryOptions(every=1), nvml=FakeNvml([0.1]), allocator=alloc, stream=out)
    stages = "schedule={use='staged', stages=[{name='adam', steps=4}, {name='predict'}]}"
    metrics = Metrics()
    trainer = phasetrain.Trainer.from_config(
        "regression", [*quiet, *SMALL, "run.steps=7", stages], plugins=[Allocates(), monitor, metrics]
    )
    trainer.fit()
    peaks = [m["mem_peak_mb"] for _s, m in metrics.steps]
    assert peaks[:4] == [10, 11, 12, 13]
    assert peaks[4:] == [4, 4, 4]  # reset when 'predict' began
    assert monitor.peaks == {"adam": 13, "predict": 4}
    assert "peak allocated per phase: adam 13.0 MB, predict 4.0 MB" in out.getvalue()


def test_emergency_fraction_below_warn_fraction_is_a_config_error(quiet):
    with pytest.raises(ConfigError, match="observers.memory.emergency_fraction"):
        phasetrain.Trainer.from_config(
            "regression", [*quiet, "observers.memory.warn_fraction=0.9", "observers.memory.emergency_fraction=0.5"]
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_real_nvml_reports_the_training_gpu(quiet):
    quiet = [q for q in quiet if "run.device" not in q]
    metrics = Metrics()
    trainer = phasetrain.Trainer.from_config(
        "regression", [*quiet, *SMALL, "run.steps=4", "run.device='cuda'", "observers.memory.every=2"], plugins=[metrics]
    )
    trainer.fit()
    m = metrics.steps[-1][1]
    assert 0 < m["mem_used_mb"] <= m["mem_total_mb"]
    assert 0 < m["mem_alloc_mb"] <= m["mem_peak_mb"]
