"""The benchmark harness end to end in tiny mode: JSON, ratios, SegResNet peer, machine, table and chart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

#: bundle runs in child processes: the slow end-to-end selection
pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[1]
BASELINE = REPO_ROOT / "bundles" / "raagr2_baseline"


def test_compare_tiny(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    # The baseline twice stands in for two variants (reference + one more) until bundles/raagr2_shared_depthwise
    # exists; the second copy is named "raagr2_baseline#2".
    cmd = [sys.executable, "-m", "benchmarks.compare", "--tiny", "--bundles", str(BASELINE), str(BASELINE)]
    proc = subprocess.run(cmd + ["--out", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    result = json.loads(out.read_text())
    names = [v["name"] for v in result["variants"]]
    assert names == ["raagr2_baseline", "raagr2_baseline#2", "SegResNet (brats_mri_segmentation)"]
    assert result["reference"] == "raagr2_baseline"
    assert result["flop_counter"] == "torch.utils.flop_counter.FlopCounterMode"
    assert result["settings"]["tiny"] and result["settings"]["slice_size"] == [32, 32]

    bundles = [v for v in result["variants"] if v["kind"] == "bundle"]
    for v in bundles:
        assert v["params"] > 0 and v["flops_per_slice"] > 0 and v["macs_per_slice"] == v["flops_per_slice"] / 2
        assert v["checkpoint_mib"] > 0 and v["threads"] >= 1
        for key in ("latency_b1_ms", "latency_batch_ms_per_slice", "volume_latency_s", "train_step_s"):
            assert v[key] > 0, key
        assert v["peak_memory_mib"] > 0 and v["train_memory_mib"] is not None
        assert v["network_def"]["_target_"].endswith("RAAGR2Net")
    assert bundles[0]["params"] == bundles[1]["params"]

    for key, ratio in result["ratios"]["raagr2_baseline"].items():
        assert ratio == pytest.approx(1.0), key

    peer = result["variants"][-1]
    assert peer["kind"] == "peer" and peer["volume_latency_s"] > 0 and peer["params"] > 0
    assert peer["latency_b1_ms"] is None and peer["flops_per_slice"] is None and peer["train_step_s"] is None
    assert peer["raw"]["volume"]["inferer"]["name"] == "SlidingWindowInferer"
    assert result["ratios"][peer["name"]]["volume_latency_s"] > 0

    machine = result["machine"]
    for key in ("cpu_model", "cpu_cores_logical", "device_name", "torch", "monai", "date"):
        assert machine[key], key

    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert any(line.startswith("| variant |") and "ratio" in line for line in table)
    assert any(line.startswith("| SegResNet") and "n/a" in line for line in table)
    assert "Ratios vs raagr2_baseline" in proc.stdout
    assert "[1/3] raagr2_baseline" in proc.stdout  # progress lines
    assert out.with_suffix(".png").stat().st_size > 1000
