"""Timing and memory measurement: warm-up, repetitions, median / p90, CUDA events, peak RSS and GPU memory.

* CPU: ``time.perf_counter`` around each call.
* CUDA: a pair of CUDA events per call, recorded on the current stream, with ``torch.cuda.synchronize()`` before
  the start event and after the end event (so queued work from earlier calls never leaks into a measurement).
* Peak RSS: Linux keeps a high-water mark (``VmHWM``) that ``/proc/self/clear_refs`` can reset (write ``5``). Before
  the measured calls we free what we can (``gc.collect`` + ``malloc_trim``), reset the mark and note the current
  RSS; after them ``VmHWM`` is the peak RSS of the process during the calls and ``VmHWM - RSS before`` is what the
  calls needed on top of what was already resident. Elsewhere: ``ru_maxrss`` (never reset; marked as such).
* Peak GPU memory: ``torch.cuda.reset_peak_memory_stats`` / ``max_memory_allocated`` (torch's allocator; CuPy's
  pool is added when CuPy is in use).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def current_rss_bytes() -> int:
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    import psutil

    return int(psutil.Process().memory_info().rss)


FULL_GC = True  # _trim: a full gc.collect() (False: the youngest generation only; see runner.Config.full_gc)


def _trim() -> None:
    gc.collect(2 if FULL_GC else 0)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakRSS:
    """Peak resident memory over a block of code (see the module docstring)."""

    def __init__(self):
        self.resettable = False
        self.before = 0
        self.peak = 0

    def __enter__(self):
        _trim()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.resettable = _status_kb("VmHWM") is not None
        except OSError:
            self.resettable = False
        self.before = current_rss_bytes()
        return self

    def __exit__(self, *exc):
        if self.resettable:
            self.peak = (_status_kb("VmHWM") or 0) * 1024
        else:  # lifetime peak; ru_maxrss is kB on Linux, bytes on macOS
            ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.peak = ru if sys.platform == "darwin" else ru * 1024
        return False

    def as_dict(self) -> dict:
        return {"peak_rss_bytes": int(self.peak), "rss_before_bytes": int(self.before),
                "peak_delta_bytes": int(max(self.peak - self.before, 0)),
                "peak_rss_method": "VmHWM reset via /proc/self/clear_refs" if self.resettable
                else "ru_maxrss (process lifetime; not resettable here)"}


class PeakGPU:
    """Peak GPU memory allocated by torch (and CuPy's pool, if used) over a block of code."""

    def __init__(self, device):
        self.device = device
        self.peak = None
        self.before = None

    def __enter__(self):
        import torch

        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc):
        import torch

        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            if "cupy" in sys.modules:
                with contextlib.suppress(Exception):
                    self.peak += sys.modules["cupy"].get_default_memory_pool().total_bytes()
        return False

    def as_dict(self) -> dict:
        if self.peak is None:
            return {}
        return {"peak_gpu_bytes": int(self.peak), "gpu_before_bytes": int(self.before or 0)}


@dataclass
class Timing:
    """Per-call times (seconds) of the measured repetitions, plus how they were taken."""

    times: list[float]
    warmup: int
    method: str
    stopped_by: str = "repeat"  # "repeat" | "budget"
    parts: dict[str, list[float]] = field(default_factory=dict)  # named sub-intervals per repetition

    @property
    def median(self) -> float:
        return float(statistics.median(self.times))

    @property
    def p90(self) -> float:
        return float(np.percentile(np.asarray(self.times), 90))

    def summary(self) -> dict:
        d = {"median_s": self.median, "p90_s": self.p90, "min_s": float(min(self.times)),
             "mean_s": float(statistics.fmean(self.times)), "n": len(self.times), "warmup": self.warmup,
             "method": self.method, "stopped_by": self.stopped_by, "all_s": [float(t) for t in self.times]}
        if self.parts:
            d["parts"] = {k: summarize(v) for k, v in self.parts.items()}
        return d


def summarize(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    return {"median_s": float(np.median(arr)), "p90_s": float(np.percentile(arr, 90)), "min_s": float(arr.min()),
            "n": len(values), "all_s": [float(v) for v in values]}


class Clock:
    """Marks named points inside one call: ``clock.mark("forward")`` closes the interval since the last mark.

    Timed calls get bare timestamps (CUDA events on the current stream on GPU), nothing else, so the stages run
    back to back exactly as in the library. Per-stage memory is taken in a separate *memory pass* (the warm-up
    call, untimed): at every mark the RSS high-water mark is read, then freed memory is returned to the OS
    (``gc.collect`` + ``malloc_trim``) and the mark is reset, so ``memory()[name]`` is the peak RSS during that
    stage minus the RSS when it began (and torch's peak GPU allocation, on CUDA). Without a warm-up call the
    memory is read in the timed calls with the cheap part only (high-water mark read + reset, no trim), which can
    under-count a stage that reuses memory freed by the previous one (``memory_method`` says which).
    """

    def __init__(self, device=None):
        self.cuda = device is not None and getattr(device, "type", "cpu") == "cuda"
        self.device = device
        self._spans: list[tuple[str, object, object]] = []
        self._open = None
        self._mem: dict[str, dict] = {}
        self._rss_start = 0
        self._gpu_start = 0
        self.mode = "time"  # "time" | "memory" (trim + reset at marks) | "time+memory" (cheap reset at marks)
        self.overhead = 0.0

    def _reset_peaks(self, trim: bool) -> None:
        if trim:
            _trim()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        self._rss_start = current_rss_bytes()
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
            self._gpu_start = torch.cuda.memory_allocated(self.device)

    def _now(self):
        if self.cuda and self.mode != "memory":
            import torch

            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def start(self, mode: str = "time"):
        """Begin a call; measure() calls this right before its own start time."""
        self.mode = mode
        self._spans = []
        self.overhead = 0.0
        if mode != "time":
            self._mem = {}
            self._reset_peaks(trim=mode == "memory")
        self._open = self._now()

    def mark(self, name: str) -> None:
        end = self._now()
        if self._open is None:  # outside a call measure() manages
            return
        self._spans.append((name, self._open, end))
        if self.mode != "time":
            t0 = time.perf_counter()
            hwm = _status_kb("VmHWM")
            m = {"peak_rss_bytes": hwm * 1024 if hwm is not None else None, "rss_before_bytes": self._rss_start}
            if hwm is not None:
                m["peak_delta_bytes"] = max(hwm * 1024 - self._rss_start, 0)
            if self.cuda:
                import torch

                m["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated(self.device))
                m["peak_gpu_delta_bytes"] = int(m["peak_gpu_bytes"] - self._gpu_start)
            m["memory_method"] = ("separate untimed pass; freed memory returned to the OS before each stage"
                                  if self.mode == "memory" else
                                  "in the timed call, high-water mark reset per stage without trimming")
            old = self._mem.get(name)
            if old is None or (m.get("peak_delta_bytes") or 0) >= (old.get("peak_delta_bytes") or 0):
                self._mem[name] = m
            self._reset_peaks(trim=self.mode == "memory")
            self.overhead += time.perf_counter() - t0
        self._open = self._now()

    def stop(self) -> None:
        self._open = None

    def intervals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, a, b in self._spans:
            dt = a.elapsed_time(b) / 1e3 if (self.cuda and not isinstance(a, float)) else b - a
            out[name] = out.get(name, 0.0) + dt
        return out

    def memory(self) -> dict[str, dict]:
        return dict(self._mem)


def measure(fn, *, warmup: int = 1, repeat: int = 5, min_repeat: int = 2, budget_s: float | None = None,
            device=None, clock: Clock | None = None) -> tuple[Timing, dict, object]:
    """Call ``fn()`` ``warmup`` times untimed, then time up to ``repeat`` calls.

    Stops early once the measured calls took ``budget_s`` in total and at least ``min_repeat`` ran. With a
    ``clock``, ``fn`` may call ``clock.mark(name)`` to time named parts of each call.

    Returns:
        (Timing, memory dict (peak RSS during the measured calls, peak GPU memory), last return value of fn).
    """
    import torch

    cuda = device is not None and getattr(device, "type", "cpu") == "cuda"
    out = None
    for i in range(warmup):
        if clock is not None and i == 0:
            clock.start("memory")  # the memory pass (untimed)
        out = fn()
        if clock is not None:
            clock.stop()
        del out
        out = None
    timed_mode = "time" if (clock is None or warmup > 0) else "time+memory"
    if cuda:
        torch.cuda.synchronize(device)
    times: list[float] = []
    parts: dict[str, list[float]] = {}
    stopped = "repeat"
    with PeakRSS() as rss, PeakGPU(device if cuda else None) as gpu:
        total = 0.0
        for _ in range(max(repeat, 1)):
            out = None
            if cuda:
                torch.cuda.synchronize(device)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                if clock is not None:
                    clock.start(timed_mode)
                start.record()
                out = fn()
                end.record()
                torch.cuda.synchronize(device)
                dt = start.elapsed_time(end) / 1e3
            else:
                if clock is not None:
                    clock.start(timed_mode)
                t0 = time.perf_counter()
                out = fn()
                dt = time.perf_counter() - t0
            if clock is not None:
                clock.stop()
                dt -= clock.overhead  # memory housekeeping between the marked intervals
            times.append(dt)
            if clock is not None:
                for k, v in clock.intervals().items():
                    parts.setdefault(k, []).append(v)
            total += dt
            if budget_s is not None and total >= budget_s and len(times) >= min_repeat and len(times) < repeat:
                stopped = "budget"
                break
    method = "cuda events + synchronize" if cuda else "time.perf_counter"
    mem = {**rss.as_dict(), **gpu.as_dict()}
    part_mem = clock.memory() if clock is not None else {}
    if part_mem:
        mem["parts"] = part_mem  # per named interval (see Clock)
        if timed_mode != "time":  # the high-water mark was reset at each mark: the overall peak is the parts'
            peaks = [m["peak_rss_bytes"] for m in part_mem.values() if m.get("peak_rss_bytes")]
            if peaks and rss.resettable:
                mem["peak_rss_bytes"] = int(max(peaks))
                mem["peak_delta_bytes"] = int(max(max(peaks) - rss.before, 0))
            gpu_peaks = [m["peak_gpu_bytes"] for m in part_mem.values() if m.get("peak_gpu_bytes")]
            if gpu_peaks:
                mem["peak_gpu_bytes"] = int(max(gpu_peaks))
    return Timing(times, warmup, method, stopped, parts), mem, out


def timing_dict(t: Timing, mem: dict) -> dict:
    return {"time": t.summary(), "memory": mem}


__all__ = ["Clock", "PeakGPU", "PeakRSS", "Timing", "asdict", "current_rss_bytes", "measure", "summarize",
           "timing_dict"]
