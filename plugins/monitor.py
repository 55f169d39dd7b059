"""The ``memory`` observer: device memory, utilisation and per-phase peaks in the step metrics.

Every ``every`` steps (default ``run.log_every``) it adds ``mem_*`` fields to the step's metrics
in a ``tryfirst`` ``post_step``, so the loggers (``trylast``) write them like any other field:

=================  =================================================================
``mem_used_mb``    device memory in use, all processes (NVML)
``mem_total_mb``   device memory in total (NVML)
``mem_used_frac``  ``mem_used_mb / mem_total_mb``: what the thresholds compare
``gpu_util``       GPU utilisation in percent over NVML's last sample period
``mem_alloc_mb``   memory held by this process's tensors (``torch.cuda.memory_allocated``)
``mem_peak_mb``    peak of ``mem_alloc_mb`` in the current phase (reset at ``phase_enter``)
=================  =================================================================

``warn_fraction`` prints one warning the first time ``mem_used_frac`` reaches it;
``emergency_fraction`` asks for a checkpoint after the step (``trainer.request_checkpoint()``) once and warns, so a
run about to run out of memory leaves a recent checkpoint behind. Either is off at 0.

Without an NVIDIA GPU (a CPU run, no ``nvidia-ml-py``, or NVML failing) it prints one line that
says so and reports the process's resident memory instead: ``mem_rss_mb`` (now, from
``/proc/self/statm``) and ``mem_maxrss_mb`` (the high-water mark, ``getrusage``). On a GPU whose
NVML does not answer, ``torch.cuda.mem_get_info`` stands in for used and total memory.

NVML and the allocator statistics are injectable (``nvml=``, ``allocator=``), so thresholds and
the emergency checkpoint are tested without a GPU.
"""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import attrs
import torch

from phasetrain import Component, hookimpl
from phasetrain.config import FieldValueError, non_negative, probability

MB = 1024.0 * 1024.0


@attrs.define
class MemoryOptions:
    every: int = attrs.field(default=0, validator=non_negative)  # steps between readings; 0: run.log_every
    # device memory in use (fraction of total) that prints one warning; 0: off
    warn_fraction: float = attrs.field(default=0.90, validator=probability)
    # fraction that writes one checkpoint and warns; 0: off
    emergency_fraction: float = attrs.field(default=0.97, validator=probability)

    @emergency_fraction.validator
    def _after_warning(self, attribute: Any, value: float) -> None:
        if value and self.warn_fraction and value < self.warn_fraction:
            raise FieldValueError(
                attribute.name, f"must be >= warn_fraction ({self.warn_fraction}) or 0, got {value!r}"
            )


# ---------------------------------------------------------------------------------------------
# Readings
# ---------------------------------------------------------------------------------------------


def rss_mb() -> float:
    """Resident memory of this process now, in MB (Linux; 0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / MB


def maxrss_mb() -> float:
    """High-water mark of this process's resident memory, in MB (ru_maxrss is KB on Linux)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / MB


class NvmlDevice:
    """One GPU as NVML sees it."""

    def __init__(self, nvml: Any, handle: Any):
        self.nvml, self.handle = nvml, handle

    def read(self) -> dict[str, float]:
        mem = self.nvml.nvmlDeviceGetMemoryInfo(self.handle)
        util = self.nvml.nvmlDeviceGetUtilizationRates(self.handle)
        return {"used": mem.used / MB, "total": mem.total / MB, "util": float(util.gpu)}


class TorchDevice:
    """Used and total memory from the CUDA driver, where NVML does not answer."""

    def __init__(self, device: torch.device):
        self.device = device

    def read(self) -> dict[str, float]:
        free, total = torch.cuda.mem_get_info(self.device)
        return {"used": (total - free) / MB, "total": total / MB}


def nvml_handle(nvml: Any, device: torch.device) -> Any:
    """The NVML handle of ``device``. CUDA and NVML number GPUs differently when
    CUDA_VISIBLE_DEVICES is set, so the GPU is found by its UUID where torch reports one."""
    if device.type != "cuda":
        return nvml.nvmlDeviceGetHandleByIndex(0)
    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        try:
            return nvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        except Exception:  # older NVML or a MIG slice: fall back to the index
            pass
    return nvml.nvmlDeviceGetHandleByIndex(index)


# ---------------------------------------------------------------------------------------------
# The observer
# ---------------------------------------------------------------------------------------------


class MemoryMonitor:
    def __init__(
        self,
        options: MemoryOptions,
        ctx: Any = None,
        *,
        nvml: Any = None,
        allocator: Any = None,
        stream: TextIO | None = None,
    ):
        self.options = options
        self._nvml_given, self._allocator_given, self._stream = nvml, allocator, stream
        self.every = options.every or (ctx.config.run.log_every if ctx is not None else 1)
        self.device: torch.device = torch.device("cpu")
        self.gpu: NvmlDevice | TorchDevice | None = None
        self.allocator: Any = None
        self.nvml: Any = None
        self.peaks: dict[str, float] = {}  # phase name -> peak MB (allocated on a GPU, RSS otherwise)
        self.warned = False
        self.emergency_checkpoint: Any = None  # where the emergency checkpoint went, once written
        self.lines: list[str] = []

    # -- output ----------------------------------------------------------------------------------

    def _say(self, text: str) -> None:
        line = f"phasetrain: memory: {text}"
        self.lines.append(line)
        print(line, file=self._stream or sys.stderr, flush=True)

    # -- set-up ----------------------------------------------------------------------------------

    def _open_nvml(self) -> tuple[Any, str]:
        nvml = self._nvml_given
        if nvml is None:
            try:
                import pynvml as nvml
            except ImportError:
                return None, "nvidia-ml-py is not installed"
        error = getattr(nvml, "NVMLError", Exception)
        try:
            nvml.nvmlInit()
        except error as exc:
            return None, f"NVML did not start ({exc})"
        try:
            handle = nvml_handle(nvml, self.device)
        except error as exc:
            nvml.nvmlShutdown()
            return None, f"NVML has no handle for {self.device} ({exc})"
        self.nvml = nvml
        return NvmlDevice(nvml, handle), ""

    @hookimpl
    def train_start(self, trainer: Any) -> None:
        self.every = self.options.every or trainer.config.run.log_every
        self.device = trainer.device
        cuda = self.device.type == "cuda"
        reason = f"device {self.device}"
        if cuda or self._nvml_given is not None:
            self.gpu, reason = self._open_nvml()
            if self.gpu is None and cuda:
                self.gpu = TorchDevice(self.device)
                self._say(f"{reason}; used/total memory from torch.cuda.mem_get_info, no utilisation")
        if self.gpu is None:
            self._say(f"no NVIDIA GPU in this run ({reason}); reporting process memory as mem_rss_mb")
        self.allocator = self._allocator_given or (torch.cuda if cuda else None)
        if self.allocator is not None:
            self.allocator.reset_peak_memory_stats(self.device)

    # -- readings --------------------------------------------------------------------------------

    def _note_peak(self, phase: str, value: float) -> None:
        self.peaks[phase] = max(self.peaks.get(phase, 0.0), value)

    @hookimpl(trylast=True)  # after an offload strategy has moved optimizer state
    def phase_enter(self, trainer: Any, previous: Any) -> None:
        if self.allocator is None:
            return
        if previous is not None:
            self._note_peak(previous.name, self.allocator.max_memory_allocated(self.device) / MB)
        self.allocator.reset_peak_memory_stats(self.device)

    def read(self) -> dict[str, float]:
        """The ``mem_*`` fields now."""
        fields: dict[str, float] = {}
        if self.gpu is not None:
            error = getattr(self.nvml, "NVMLError", ()) if self.nvml is not None else ()
            try:
                got = self.gpu.read()
            except error as exc:
                self._say(f"NVML stopped answering ({exc}); switching it off")
                self.gpu = TorchDevice(self.device) if self.device.type == "cuda" else None
                return self.read()
            fields["mem_used_mb"] = got["used"]
            fields["mem_total_mb"] = got["total"]
            fields["mem_used_frac"] = got["used"] / got["total"] if got["total"] else 0.0
            if "util" in got:
                fields["gpu_util"] = got["util"]
        if self.allocator is not None:
            fields["mem_alloc_mb"] = self.allocator.memory_allocated(self.device) / MB
            fields["mem_peak_mb"] = self.allocator.max_memory_allocated(self.device) / MB
        if self.gpu is None and self.allocator is None:
            now = rss_mb()
            fields["mem_rss_mb"] = now
            fields["mem_maxrss_mb"] = max(maxrss_mb(), now)  # the kernel updates ru_maxrss lazily
        return fields

    @hookimpl(tryfirst=True)  # before the loggers, so they write the fields
    def post_step(self, trainer: Any, step: int, metrics: MutableMapping[str, Any]) -> None:
        if (step + 1) % self.every:
            return
        fields = self.read()
        metrics.update(fields)
        phase = trainer.state.phase
        self._note_peak(phase, fields.get("mem_peak_mb", fields.get("mem_rss_mb", 0.0)))
        if "mem_used_frac" in fields:
            self._thresholds(trainer, step, fields)

    @hookimpl
    def save_end(self, path: Any) -> None:
        if self.emergency_checkpoint == "requested":
            self.emergency_checkpoint = path

    def _thresholds(self, trainer: Any, step: int, fields: dict[str, float]) -> None:
        frac, o = fields["mem_used_frac"], self.options
        where = f"{fields['mem_used_mb']:.0f} of {fields['mem_total_mb']:.0f} MB ({frac:.0%}) at step {step + 1}"
        if o.warn_fraction and frac >= o.warn_fraction and not self.warned:
            self.warned = True
            self._say(f"warning: device memory {where} is above warn_fraction {o.warn_fraction}")
        if o.emergency_fraction and frac >= o.emergency_fraction and self.emergency_checkpoint is None:
            trainer.request_checkpoint()
            self.emergency_checkpoint = "requested"
            self._say(
                f"warning: device memory {where} is above emergency_fraction {o.emergency_fraction}; "
                "a checkpoint is written after this step"
            )

    @hookimpl
    def train_end(self, trainer: Any) -> None:
        if self.allocator is not None:
            self._note_peak(trainer.state.phase, self.allocator.max_memory_allocated(self.device) / MB)
            if self.peaks:
                shown = ", ".join(f"{name} {mb:.1f} MB" for name, mb in self.peaks.items())
                self._say(f"peak allocated per phase: {shown}")
        if self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except Exception:  # shutting down is best effort
                pass
            self.nvml = None


@hookimpl
def phasetrain_components() -> list[Component]:
    return [
        Component("observer", "memory", MemoryMonitor, MemoryOptions,
                  "device memory (NVML), utilisation and per-phase peaks as mem_* metrics"),
    ]
