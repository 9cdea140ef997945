"""Time PyTorch and the exported CPU backends on real slices and write the record ``backend: auto`` reads.

The record (``models/backends.json``, :data:`custom_modules.inference.BACKEND_RECORD`) holds, per backend, the
median milliseconds per slice over the timed passes, every pass, and its check from the export report; and the
machine: CPU model and flags (:func:`custom_modules.hardware.cpu_signature`) and the threads used. Timings are
wall clock (``time.perf_counter``) of one batch of ``sw_batch_size`` slices per pass after one warm-up pass.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from custom_modules.hardware import cpu_signature
from custom_modules.networks.complexity import wall_times_ms

__all__ = ["RECORD_FORMAT", "backend_record", "time_backends"]

#: version of the ``backends.json`` layout
RECORD_FORMAT = 1


def time_backends(
    runners: Mapping[str, nn.Module], batch: torch.Tensor, repeats: int = 3, warmup: int = 1
) -> dict[str, Any]:
    """Per runner: ``{"ms_per_slice": median, "times_ms": [...]}`` (per slice) for ``batch (N, C, H, W)``.

    The runners are timed in turn, each ``warmup`` untimed then ``repeats`` timed passes, under ``no_grad``.
    """
    results: dict[str, Any] = {}
    with torch.no_grad():
        for name, runner in runners.items():
            times = [t / batch.shape[0] for t in wall_times_ms(lambda: runner(batch), repeats, warmup)]
            results[name] = {"ms_per_slice": statistics.median(times), "times_ms": times}
    return {
        "input_shape": list(batch.shape),
        "warmup": warmup,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "backends": results,
    }


def backend_record(timings: Mapping[str, Any], checks: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The ``backends.json`` content: :func:`time_backends` output joined with each backend's check."""
    return {
        "format": RECORD_FORMAT,
        "machine": {**cpu_signature(), "threads": timings["threads"]},
        "measured": {k: timings[k] for k in ("input_shape", "warmup", "repeats")},
        "backends": {name: {**timing, "check": dict(checks[name])} for name, timing in timings["backends"].items()},
    }
