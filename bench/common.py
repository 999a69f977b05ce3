"""Shared measurement helpers for the benchmarks in bench/ (timing, peak memory, child processes, results files).

Nothing here imports torch at module level, so a benchmark can measure the resident set size (RSS) of a process
before torch is loaded. Functions that need torch import it inside.

Peak memory, the two methods used in bench/ and why:

- CPU: `max_rss_bytes()` reads the kernel's high-water mark of the resident set (VmHWM), exact and free of
  sampling gaps. glibc keeps freed heap pages mapped, so after one workload the RSS no longer says anything about
  the next: each workload therefore runs in a fresh child process (`run_json_child`) that reports
  `max_rss_bytes() - baseline`, the baseline being `rss_bytes()` after the imports and before the workload
  allocates anything. `reset_peak_rss()` restarts the high-water mark, so a phase (the training steps, not the
  model construction before them) can be measured on its own. `RssPeakSampler` (a thread polling
  /proc/self/statm) is the in-process alternative for a workload that cannot be moved to a child; it can miss a
  peak shorter than its interval.
- CUDA: `torch.cuda.max_memory_allocated()` counts the bytes of live tensors exactly (not the allocator's cached
  reserve), so it needs no child process; `cuda_peak_bytes` wraps the reset/read pair.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ppar_core.config import parse_hxw

__all__ = [
    "RssPeakSampler",
    "TimingResult",
    "alternating_times",
    "cuda_peak_bytes",
    "emit_child_result",
    "machine_info",
    "max_rss_bytes",
    "median_seconds",
    "reset_peak_rss",
    "results_dir",
    "rss_bytes",
    "run_json_child",
    "synchronize",
    "write_result",
]

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
JSON_PREFIX = "BENCH_JSON "  # a child's result line; everything else it prints is passed through as log


def rss_bytes() -> int:
    """The current resident set size of this process in bytes (Linux /proc/self/statm; ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * _PAGE_SIZE
    except OSError:  # not Linux: the high-water mark is the best available figure
        return max_rss_bytes()


def max_rss_bytes() -> int:
    """The peak resident set size of this process in bytes: since the last `reset_peak_rss()`, else since start.

    Linux: VmHWM of /proc/self/status (the counter `reset_peak_rss` resets); elsewhere ru_maxrss.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs).

    Lets one process measure the peak of one phase (e.g. training steps, not the model build before them).
    Returns False where it is not supported; `max_rss_bytes()` then still counts from the process start.
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class RssPeakSampler:
    """Context manager: the peak RSS reached inside the `with` block, sampled by a background thread.

    `baseline` is the RSS on entry, `peak` the largest sample (including one on entry and one on exit), and
    `peak_delta = peak - baseline` the extra memory the block needed. The thread holds the GIL only to read one
    small file per `interval_s`, which costs well under 1% of a busy core at the default 5 ms.
    """

    def __init__(self, *, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.baseline = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def peak_delta(self) -> int:
        return max(self.peak - self.baseline, 0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> RssPeakSampler:
        self.baseline = self.peak = rss_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def synchronize(device: Any) -> None:
    """Wait for queued device work (CUDA); a no-op on CPU. `device` is a torch.device or a string."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cuda_peak_bytes(fn: Callable[[], object], *, device: Any) -> tuple[int, int]:
    """Run `fn` once on a CUDA device -> (peak allocated bytes during it, allocated bytes before it).

    The peak counts live tensors only (`max_memory_allocated`), including those that existed before `fn`.
    """
    import torch

    synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return int(torch.cuda.max_memory_allocated(device)), int(before)


@dataclass
class TimingResult:
    """Wall-clock seconds of the timed calls (warm-up calls excluded) and their median."""

    times_s: list[float] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s) if self.times_s else float("nan")


def median_seconds(fn: Callable[[], object], *, repeats: int, warmup: int = 1, device: Any = "cpu") -> TimingResult:
    """Call `fn` `warmup` times untimed, then `repeats` times timed (device synchronised around each call)."""
    for _ in range(warmup):
        fn()
    result = TimingResult()
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        result.times_s.append(time.perf_counter() - start)
    return result


def alternating_times(
    workloads: dict[str, Callable[[], object]],
    *,
    repeats: int,
    device: Any = "cpu",
    on_repeat: Callable[[int, dict[str, TimingResult]], None] | None = None,
) -> dict[str, TimingResult]:
    """Time each workload `repeats` times, alternating in ABBA order (A, B, B, A, ...; with three: A, B, C, C, B, A)
    so that drift of a shared machine hits all alike. No warm-up here: warm up before. `on_repeat(i, results)` is
    called after each round (progress lines)."""
    results = {name: TimingResult() for name in workloads}
    names = list(workloads)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            results[name].times_s += median_seconds(workloads[name], repeats=1, warmup=0, device=device).times_s
        if on_repeat is not None:
            on_repeat(repeat, results)
    return results


def run_json_child(argv: Sequence[str], *, timeout_s: float = 900.0, env: dict[str, str] | None = None) -> dict:
    """Run `python argv...` in a fresh process and return the JSON object of its last `BENCH_JSON {...}` line.

    The child's other output goes to this process's stderr, so a parent's stdout stays clean. Raises RuntimeError
    with the child's output tail when it fails or prints no result.
    """
    proc = subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, **(env or {})},
        check=False,
    )
    payload: dict | None = None
    for line in proc.stdout.splitlines():
        if line.startswith(JSON_PREFIX):
            payload = json.loads(line[len(JSON_PREFIX) :])
        else:
            print(line, file=sys.stderr)
    if proc.returncode != 0 or payload is None:
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise RuntimeError(f"benchmark child {' '.join(argv)} failed (exit {proc.returncode}):\n{tail}")
    return payload


def emit_child_result(payload: dict) -> None:
    """What a child started by `run_json_child` prints as its result (one line on stdout)."""
    print(JSON_PREFIX + json.dumps(payload), flush=True)


def size_arg(text: str) -> tuple[int, int]:
    """An argparse `type` for sizes written HEIGHTxWIDTH ("256x512" -> (256, 512))."""
    size = parse_hxw(text)
    if size is None:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, e.g. 256x512, got {text!r}")
    return size


def machine_info(device: Any = "cpu") -> dict[str, Any]:
    """Where and with what a figure was measured: date, host CPU, core and thread counts, versions, the GPU."""
    import torch

    info: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "device": str(device),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def results_dir() -> Path | None:
    """`$OUT` when set (the GPU machine collects results there), else None."""
    out = os.environ.get("OUT")
    return Path(out) if out else None


def write_result(name: str, payload: dict[str, Any], *, path: str | Path | None = None) -> Path | None:
    """Write `payload` as JSON to `path`, or to `$OUT/<name>.json` when no path is given and $OUT is set."""
    if path is None:
        folder = results_dir()
        if folder is None:
            return None
        path = folder / f"{name}.json"
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return target
