"""Paired per-case statistics for a compressed model against its reference (the teacher): bootstrap CI, Wilcoxon.

Every function takes per-case values of one quantity (e.g. Dice of one region in [0, 1], or HD95 in mm) for the
same cases, in the same order, and returns a plain JSON-ready dict (floats, ints, strings, ``None``). Differences
are always ``model - reference``, in the unit of the inputs. NaN values are dropped pairwise.

numpy and scipy only: no torch here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["BOOTSTRAP_METHOD", "compare_to_reference", "paired_bootstrap_ci", "paired_wilcoxon"]

BOOTSTRAP_METHOD = "percentile bootstrap of the mean paired difference"
#: the largest sample scipy runs the exact signed-rank null distribution for (``method="auto"`` in scipy >= 1.13)
_EXACT_MAX_N = 50
#: with ties or zeros, the largest sample whose 2**n sign flips a default ``PermutationMethod`` enumerates fully
_PERMUTATION_MAX_N = 13
#: resamples drawn per chunk, which bounds memory at about ``_CHUNK * n`` int64 indices
_CHUNK = 1000


def _as_1d(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one value per case), got shape {array.shape}")
    return array


def _missing(value: float | None) -> bool:
    return value is None or math.isnan(float(value))


def paired_bootstrap_ci(
    deltas: Sequence[float] | np.ndarray,
    n_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile bootstrap confidence interval of the mean of per-case paired differences.

    Args:
        deltas: (n_cases,) per-case ``model - reference`` differences, in the unit of the quantity; NaNs are dropped.
        n_resamples: bootstrap resamples of the cases (with replacement).
        confidence: two-sided confidence level in (0, 1); the interval is the ``(1 - confidence) / 2`` and
            ``(1 + confidence) / 2`` quantiles of the resampled means.
        seed: seed of ``numpy.random.default_rng``: the same seed and inputs give the same interval.

    Returns:
        ``{"mean", "low", "high", "n", "confidence", "n_resamples", "method"}``: ``mean``/``low``/``high`` are
        ``None`` when no finite difference is left (``n == 0``); with ``n == 1`` the interval is the single value.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    values = _as_1d(deltas, "deltas")
    values = values[~np.isnan(values)]
    n = int(values.size)
    result: dict[str, Any] = {
        "mean": None,
        "low": None,
        "high": None,
        "n": n,
        "confidence": float(confidence),
        "n_resamples": int(n_resamples),
        "method": BOOTSTRAP_METHOD,
    }
    if n == 0:
        return result
    mean = float(values.mean())
    result["mean"] = mean
    if n == 1:
        result["low"] = result["high"] = mean
        return result
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, _CHUNK):
        stop = min(start + _CHUNK, n_resamples)
        means[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    result["low"], result["high"] = float(low), float(high)
    return result


def paired_wilcoxon(
    model_values: Sequence[float] | np.ndarray, reference_values: Sequence[float] | np.ndarray
) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of ``model - reference`` on paired per-case values.

    Pairs with a NaN on either side are dropped; zero differences are discarded (``zero_method="wilcox"``). The
    p-value is exact whenever scipy allows, the same choice as ``scipy.stats.wilcoxon(method="auto")``:

    - no ties and no zero differences, ``n <= 50``: the exact signed-rank null distribution;
    - ties or zeros, ``n <= 13``: an exhaustive sign-flip permutation test (exact given the ties);
    - otherwise: the normal approximation (no continuity correction).

    ``method`` in the result says which one ran. Exact tests have a floor: with ``n`` nonzero differences the
    smallest two-sided p-value is ``2 / 2**n``, e.g. 0.0625 for ``n = 5`` cases, so five cases can never reach
    p < 0.05 however large the effect. When every difference is zero the test is undefined in scipy; this returns
    ``statistic = 0.0`` and ``p_value = 1.0`` (no evidence of a difference).

    Args:
        model_values: (n_cases,) per-case values of the model.
        reference_values: (n_cases,) per-case values of the reference, same cases in the same order.

    Returns:
        ``{"statistic", "p_value", "n", "method"}``: ``statistic`` is ``min(R+, R-)`` (scipy's two-sided
        statistic), ``n`` the number of pairs kept (zero differences included); ``statistic``/``p_value`` are
        ``None`` when ``n == 0``.
    """
    model = _as_1d(model_values, "model_values")
    reference = _as_1d(reference_values, "reference_values")
    if model.shape != reference.shape:
        raise ValueError(f"paired values need the same length, got {model.size} and {reference.size}")
    keep = ~(np.isnan(model) | np.isnan(reference))
    deltas = model[keep] - reference[keep]
    n = int(deltas.size)
    result: dict[str, Any] = {"statistic": None, "p_value": None, "n": n, "method": "none: no complete pairs"}
    if n < 1:
        return result
    nonzero = deltas[deltas != 0]
    if nonzero.size == 0:
        result.update(statistic=0.0, p_value=1.0, method="none: all paired differences are zero (p = 1 by convention)")
        return result
    has_zeros = nonzero.size < n
    has_ties = np.unique(np.abs(nonzero)).size < nonzero.size
    method: str | stats.PermutationMethod
    if not (has_zeros or has_ties) and n <= _EXACT_MAX_N:
        method, description = "exact", "exact (signed-rank null distribution), two-sided"
    elif n <= _PERMUTATION_MAX_N:
        method = stats.PermutationMethod()
        description = "exact (exhaustive sign-flip permutation; ties or zero differences present), two-sided"
    else:
        method, description = "asymptotic", "asymptotic (normal approximation, no continuity correction), two-sided"
    test = stats.wilcoxon(deltas, zero_method="wilcox", alternative="two-sided", method=method)
    p_value = float(test.pvalue)
    result.update(statistic=float(test.statistic), p_value=min(p_value, 1.0), method=description)
    return result


def compare_to_reference(
    per_case_model: Mapping[str, float | None],
    per_case_reference: Mapping[str, float | None],
    n_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Pair a model's per-case values with the reference's by case id; bootstrap CI and Wilcoxon of the deltas.

    Only cases present in both mappings with a value (not NaN, not ``None``) on both sides are used, in sorted case-id
    order (so the bootstrap is reproducible whatever the dict order).

    Args:
        per_case_model: case id -> value of the model (e.g. Dice in [0, 1] or HD95 in mm).
        per_case_reference: case id -> value of the reference (the teacher), same quantity and unit.
        n_resamples, confidence, seed: passed to :func:`paired_bootstrap_ci`.

    Returns:
        ``{"cases": [case ids used], "unpaired_cases": [ids in only one mapping], "nan_cases": [ids in both with a
        NaN or None], "delta_mean": mean of model - reference or None, "ci": paired_bootstrap_ci(...),
        "wilcoxon": paired_wilcoxon(...)}``.
    """
    shared = sorted(set(per_case_model) & set(per_case_reference))
    unpaired = sorted(set(per_case_model) ^ set(per_case_reference))
    cases = [c for c in shared if not (_missing(per_case_model[c]) or _missing(per_case_reference[c]))]
    nan_cases = sorted(set(shared) - set(cases))
    model = np.array([per_case_model[c] for c in cases], dtype=np.float64)
    reference = np.array([per_case_reference[c] for c in cases], dtype=np.float64)
    ci = paired_bootstrap_ci(model - reference, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return {
        "cases": cases,
        "unpaired_cases": unpaired,
        "nan_cases": nan_cases,
        "delta_mean": ci["mean"],
        "ci": ci,
        "wilcoxon": paired_wilcoxon(model, reference),
    }
