"""Mean and spread of per-case metrics (one row per case, one column per metric, e.g. ``wt_dice``)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

__all__ = ["finite_mean_std", "region_summary"]


def finite_mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite ``values`` (NaN when none; std 0 for one value)."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return float("nan"), float("nan")
    return statistics.fmean(finite), (statistics.stdev(finite) if len(finite) > 1 else 0.0)


def region_summary(cases: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """``{column: {"mean", "std"}}`` over cases of every metric column (``wt_dice``, ``et_hd95``, ...)."""
    columns = [c for c in cases[0] if c != "case"] if cases else []
    return {c: dict(zip(("mean", "std"), finite_mean_std([float(case[c]) for case in cases]))) for c in columns}
