"""Paired per-case statistics: bootstrap CI of the mean difference, Wilcoxon signed-rank, pairing by case id."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from raagr2_tools.analysis import BOOTSTRAP_METHOD, compare_to_reference, paired_bootstrap_ci, paired_wilcoxon


def dice_deltas(n: int, seed: int = 0) -> np.ndarray:
    """(n,) per-case Dice differences (model - teacher): a small loss with case-to-case noise."""
    return np.random.default_rng(seed).normal(-0.01, 0.03, size=n)


def test_bootstrap_ci_contains_mean_and_reports_settings():
    deltas = dice_deltas(40)
    ci = paired_bootstrap_ci(deltas, n_resamples=2000, confidence=0.9, seed=3)
    assert ci["mean"] == pytest.approx(deltas.mean())
    assert ci["low"] < ci["mean"] < ci["high"]
    assert ci["n"] == 40 and ci["confidence"] == 0.9 and ci["n_resamples"] == 2000
    assert ci["method"] == BOOTSTRAP_METHOD == "percentile bootstrap of the mean paired difference"
    # roughly the normal-theory interval of a mean: +-1.645 standard errors
    half_width = 1.645 * deltas.std(ddof=1) / math.sqrt(deltas.size)
    assert (ci["high"] - ci["low"]) / 2 == pytest.approx(half_width, rel=0.2)


def test_bootstrap_ci_is_deterministic_by_seed():
    deltas = dice_deltas(25)
    first, again = paired_bootstrap_ci(deltas, seed=7), paired_bootstrap_ci(deltas, seed=7)
    assert first == again
    other = paired_bootstrap_ci(deltas, seed=8)
    assert (other["low"], other["high"]) != (first["low"], first["high"])


def test_bootstrap_ci_narrows_with_more_cases():
    widths = []
    for n in (10, 40, 160):
        ci = paired_bootstrap_ci(dice_deltas(n, seed=n), n_resamples=4000)
        widths.append(ci["high"] - ci["low"])
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] > 2.5  # about sqrt(16) = 4 in theory


def test_bootstrap_ci_drops_nan_and_handles_tiny_samples():
    ci = paired_bootstrap_ci([0.1, float("nan"), 0.3])
    assert ci["n"] == 2 and ci["mean"] == pytest.approx(0.2)
    assert 0.1 <= ci["low"] <= ci["high"] <= 0.3
    single = paired_bootstrap_ci([float("nan"), -0.02])
    assert single["n"] == 1 and single["mean"] == single["low"] == single["high"] == pytest.approx(-0.02)
    empty = paired_bootstrap_ci([float("nan")])
    assert empty["n"] == 0 and empty["mean"] is None and empty["low"] is None and empty["high"] is None
    assert paired_bootstrap_ci([])["n"] == 0


@pytest.mark.parametrize("kwargs", [{"confidence": 1.0}, {"confidence": 0.0}, {"n_resamples": 0}])
def test_bootstrap_ci_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        paired_bootstrap_ci([0.1, 0.2, 0.3], **kwargs)


def test_wilcoxon_matches_scipy_on_random_example():
    rng = np.random.default_rng(0)
    reference = rng.uniform(0.6, 0.9, size=20)
    model = reference + rng.normal(-0.02, 0.03, size=20)
    result = paired_wilcoxon(model, reference)
    expected = stats.wilcoxon(model, reference)
    assert result["n"] == 20
    assert result["statistic"] == pytest.approx(float(expected.statistic))
    assert result["p_value"] == pytest.approx(float(expected.pvalue))
    assert result["method"].startswith("exact")


def test_wilcoxon_large_sample_uses_normal_approximation():
    rng = np.random.default_rng(1)
    reference = rng.uniform(0.6, 0.9, size=80)
    model = reference + rng.normal(0.0, 0.03, size=80)
    result = paired_wilcoxon(model, reference)
    expected = stats.wilcoxon(model - reference)
    assert result["p_value"] == pytest.approx(float(expected.pvalue))
    assert result["method"].startswith("asymptotic")


def test_wilcoxon_with_ties_and_zeros_matches_scipy_auto():
    deltas = np.array([0.0, 0.01, 0.01, -0.02, 0.03, 0.05, 0.04, 0.06])
    result = paired_wilcoxon(deltas, np.zeros_like(deltas))
    expected = stats.wilcoxon(deltas)
    assert result["p_value"] == pytest.approx(float(expected.pvalue))
    assert "permutation" in result["method"] and result["n"] == 8


def test_wilcoxon_exact_floor_for_five_cases():
    result = paired_wilcoxon([0.9, 0.8, 0.85, 0.7, 0.95], [0.1, 0.2, 0.3, 0.4, 0.5])
    assert result["p_value"] == pytest.approx(0.0625)  # 2 / 2**5: five cases can never reach p < 0.05
    assert result["statistic"] == 0.0


def test_wilcoxon_all_zero_differences_gives_p_one():
    values = [0.8, 0.7, 0.9, 0.75]
    result = paired_wilcoxon(values, list(values))
    assert result["p_value"] == 1.0 and result["statistic"] == 0.0 and result["n"] == 4
    assert "zero" in result["method"]


def test_wilcoxon_drops_nan_pairs_and_handles_no_pairs():
    result = paired_wilcoxon([0.9, float("nan"), 0.7, 0.6], [0.8, 0.5, float("nan"), 0.65])
    assert result["n"] == 2
    assert result["p_value"] == pytest.approx(float(stats.wilcoxon([0.1, -0.05]).pvalue))
    none = paired_wilcoxon([float("nan")], [0.5])
    assert none["n"] == 0 and none["statistic"] is None and none["p_value"] is None
    with pytest.raises(ValueError, match="same length"):
        paired_wilcoxon([0.1, 0.2], [0.1])


def test_compare_to_reference_pairs_by_case_id():
    teacher = {"case_a": 0.80, "case_b": 0.70, "case_c": 0.90, "teacher_only": 0.5, "case_nan": 0.6}
    # a different insertion order: pairing must go by id, not by position
    model = {"case_c": 0.85, "model_only": 0.1, "case_a": 0.78, "case_b": 0.71, "case_nan": float("nan")}
    result = compare_to_reference(model, teacher, n_resamples=500, seed=1)
    assert result["cases"] == ["case_a", "case_b", "case_c"]
    assert result["unpaired_cases"] == ["model_only", "teacher_only"]
    assert result["nan_cases"] == ["case_nan"]
    deltas = [0.78 - 0.80, 0.71 - 0.70, 0.85 - 0.90]
    assert result["delta_mean"] == pytest.approx(np.mean(deltas))
    assert result["ci"] == paired_bootstrap_ci(deltas, n_resamples=500, seed=1)
    assert result["wilcoxon"] == paired_wilcoxon([0.78, 0.71, 0.85], [0.80, 0.70, 0.90])
    assert result["wilcoxon"]["n"] == 3


def test_compare_to_reference_without_shared_cases():
    result = compare_to_reference({"a": 0.5}, {"b": 0.6})
    assert result["cases"] == [] and result["delta_mean"] is None
    assert result["ci"]["n"] == 0 and result["wilcoxon"]["p_value"] is None
