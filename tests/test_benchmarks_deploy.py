"""The deployment latency benchmark (benchmarks.deploy) end to end in tiny mode, and its target paragraph."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.deploy import target_summary
from benchmarks.deploy_measure import CPU_BACKENDS, region_dice

#: bundle runs in child processes: the slow end-to-end selection
pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    out = tmp_path_factory.mktemp("deploy") / "d.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "benchmarks.deploy", "--tiny", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads(out.read_text()), proc.stdout, out


def test_every_variant_and_backend_has_a_full_row(tiny_run) -> None:
    result, _, _ = tiny_run
    names = [v["name"] for v in result["variants"]]
    assert names[0] == "raagr2_baseline" and names[-1] == "pruned50" and result["reference"] == "raagr2_baseline"
    if (REPO_ROOT / "bundles" / "raagr2_shared_depthwise").is_dir():
        assert "raagr2_shared_depthwise" in names
    assert all(not v.get("error") and not v["backend_errors"] for v in result["variants"]), result["variants"]
    rows = result["rows"]
    for name in names:
        full = {r["backend"] for r in rows if r["variant"] == name and r["option"] == "full"}
        assert full == set(CPU_BACKENDS), (name, full)
        variant = next(v for v in result["variants"] if v["name"] == name)
        options = {(r["backend"], r["option"]) for r in rows if r["variant"] == name and r["option"] != "full"}
        expected = {(b, o) for b in {"torch", variant["fastest_backend"]} for o in ("skip", "skip+crop")}
        assert options == expected, (name, options)
        assert variant["flops_per_slice"] > 0 and variant["params"] > 0 and variant["matmul"]["gflops"] > 0
    by_name = {v["name"]: v for v in result["variants"]}
    assert by_name["pruned50"]["params"] < by_name["raagr2_baseline"]["params"]
    assert by_name["pruned50"]["pruning"]["round_to"] == 8


def test_ratios_agreement_and_gflops(tiny_run) -> None:
    result, _, _ = tiny_run
    assert result["matmul"]["gflops"] > 0 and result["reference_volume_s"] > 0
    for r in result["rows"]:
        assert r["volume_s"] > 0 and r["slice_ms"] > 0 and r["speedup"] > 0 and r["gflops"] > 0
        assert 0 < r["pixels_run_fraction"] <= 1 and 0 < r["slices_run"] <= r["slices"]
        assert all(0.0 <= a <= 1.0 for a in r["agreement"].values()) and set(r["agreement"]) == {"tc", "wt", "et"}
        if r["backend"] == "torch" and r["option"] == "full":
            assert r["agreement"] == {"tc": 1.0, "wt": 1.0, "et": 1.0}
        if r["option"] == "full":
            assert r["slices_run"] == r["slices"] and r["pixels_run_fraction"] == 1.0
        else:
            assert r["slices_run"] == result["input"]["brain_slices"]
    reference = next(
        r
        for r in result["rows"]
        if r["variant"] == "raagr2_baseline" and r["backend"] == "torch" and r["option"] == "full"
    )
    assert reference["speedup"] == pytest.approx(1.0)


def test_inputs_machine_segresnet_markdown_and_chart(tiny_run) -> None:
    result, stdout, out = tiny_run
    assert result["input"]["shape"] == [4, 32, 32, 8] and result["input"]["source"] in ("real", "phantom")
    assert result["input"]["brain_slices"] < result["input"]["slices"]  # the cut keeps slices without brain
    for key in ("cpu_model", "cpu_cores_logical", "device_name", "torch", "date"):
        assert result["machine"][key], key
    assert result["segresnet"]["volume_latency_s"] > 0 and result["segresnet_volume_s"] > 0
    markdown = result["markdown"]
    assert "15x" in markdown and "**Target**" in markdown and "What limits it" in markdown
    assert "| SegResNet" in markdown and markdown in stdout
    assert result["target"]["best_row"] and result["target"]["budget_s"] > 0
    assert out.with_suffix(".png").stat().st_size > 1000


def _result(rows: list[dict[str, Any]], segresnet_s: float | None = 18.0) -> dict[str, Any]:
    base = {
        "variant": "raagr2_baseline",
        "slices": 155,
        "slices_run": 155,
        "pixels_run_fraction": 1.0,
        "gflops_fraction_of_matmul": 0.2,
        "matmul_gflops": 100.0,
    }
    full = []
    for r in rows:
        row = {**base, **r}
        row.setdefault("network_s", row["volume_s"] * 0.9)
        row["network_fraction"] = row["network_s"] / row["volume_s"]
        row["speedup"] = 80.0 / row["volume_s"]
        row["executed_gflop"] = row["gflops"] * row["volume_s"]
        row["min_agreement"] = min(row["agreement"].values())
        full.append(row)
    return {
        "rows": full,
        "reference": "raagr2_baseline",
        "reference_volume_s": 80.0,
        "segresnet_volume_s": segresnet_s,
        "settings": {"target_speedup": 15.0, "agreement_threshold": 0.99, "device": "cpu"},
        "machine": {"cpu_cores_usable": 2},
        "threads": 2,
        "input": {"shape": [4, 240, 240, 155]},
        "matmul": {"n": 2048},
        "variants": [{"name": "raagr2_baseline", "weights": "random (seeded)"}],
    }


def test_target_summary_picks_the_fastest_row_that_agrees() -> None:
    good = {"tc": 1.0, "wt": 0.995, "et": 0.99}
    rows = [
        {"backend": "torch", "option": "full", "volume_s": 80.0, "gflops": 20.0, "agreement": good},
        {
            "backend": "ort_int8",
            "option": "skip+crop",
            "volume_s": 4.0,
            "gflops": 40.0,
            "agreement": {**good, "et": 0.5},
        },
        {"backend": "ort_fp32", "option": "skip+crop", "volume_s": 10.0, "gflops": 30.0, "agreement": good},
    ]
    summary = target_summary(_result(rows))
    assert summary["best_row"] == "raagr2_baseline / ort_fp32 / skip+crop"
    assert summary["best_speedup"] == pytest.approx(8.0) and not summary["meets_speedup"]
    assert summary["beats_segresnet"] and summary["fastest_row"].endswith("ort_int8 / skip+crop")
    assert "**not met**" in summary["text"] and "Fastest row overall" in summary["text"]
    # 15x budget 5.33 s; 300 GFLOP at the 100 GFLOP/s matmul rate take 3 s: efficiency-bound
    assert "kernel efficiency" in summary["text"] and "random" in summary["text"]

    rows[2]["volume_s"] = 5.0
    summary = target_summary(_result(rows, segresnet_s=None))
    assert summary["meets_speedup"] and "Speed target met" in summary["text"] and "not measured" in summary["text"]


def test_region_dice() -> None:
    a = torch.zeros(3, 4, 4, 2, dtype=torch.bool)
    b = a.clone()
    a[0, :2] = True
    b[0, :1] = True
    a[1, 0, 0] = True
    dice = region_dice(a, b)
    assert dice["tc"] == pytest.approx(2 * 8 / (16 + 8)) and dice["wt"] == 0.0 and dice["et"] == 1.0


def test_empty_reference_mask_makes_agreement_undefined_not_perfect() -> None:
    """A variant whose torch full mask is empty agrees 1.0 with any empty mask; that must not count as deployable."""
    from benchmarks.deploy import flatten_rows

    def row(backend: str, voxels: int, volume_s: float) -> dict[str, Any]:
        return {
            "backend": backend,
            "option": "full",
            "volume_s": volume_s,
            "mask_voxels": {"tc": voxels, "wt": 5, "et": 0},
            "agreement": {"tc": 1.0, "wt": 0.9, "et": 1.0},
        }

    variant = {
        "name": "v",
        "params": 1,
        "flops_per_slice": 1,
        "matmul": {"gflops": 1.0},
        "rows": [row("torch", 0, 10.0), row("ort_fp32", 0, 5.0)],
    }
    rows = flatten_rows([variant], reference_s=10.0, segresnet_s=None)
    assert [r["agreement_regions"] for r in rows] == [["wt"], ["wt"]] and rows[1]["min_agreement"] == 0.9
    variant["rows"][0]["mask_voxels"]["wt"] = 0
    rows = flatten_rows([variant], reference_s=10.0, segresnet_s=None)
    assert all(r["min_agreement"] is None for r in rows)
    result = {**_result([]), "rows": rows}
    assert "best_row" not in target_summary(result)
