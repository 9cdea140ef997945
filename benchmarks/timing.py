"""Wall-clock timing (seconds) with device synchronisation, and process memory readings (MiB)."""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["synchronize", "time_repeats", "peak_rss_mib", "current_rss_mib"]


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work on ``device`` (no-op on CPU), so a timer read covers the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_repeats(fn: Callable[[], Any], warmup: int, repeats: int, device: torch.device) -> dict[str, Any]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed.

    Returns ``{"median_s", "times_s", "warmup", "repeats"}``; times are wall-clock seconds
    (``time.perf_counter``), synchronised before and after each call on CUDA.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "times_s": times, "warmup": warmup, "repeats": repeats}


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 2**10


def current_rss_mib() -> float | None:
    """Current resident set size of this process in MiB (``/proc/self/statm``; None where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
