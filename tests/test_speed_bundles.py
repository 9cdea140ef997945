"""benchmarks.study.speed_bundles: one deployable bundle per trained model of a fold, kept while its weights match."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.study.speed_bundles import BASELINE, write_fold


def _compressed(unit: Path, entry: str, ratio: int, weights: bytes) -> None:
    bundle = unit / entry / f"raagr2_pruned_taylor_{ratio}"
    (bundle / "configs").mkdir(parents=True)
    for name in ("inference.json", "export.json"):
        (bundle / "configs" / name).write_text(json.dumps({"network_def": {"width": ratio}, "backend": "torch"}))
    (bundle / "models").mkdir()
    (bundle / "models" / "model.pt").write_bytes(weights)
    (unit / entry / f"raagr2_pruned_taylor_{ratio}.work").mkdir()


def test_every_compressed_model_gets_a_bundle_and_matching_ones_are_kept(tmp_path: Path) -> None:
    unit = tmp_path / "units" / "s0" / "f0"
    (unit / "teacher_baseline" / "models").mkdir(parents=True)
    (unit / "teacher_baseline" / "models" / "model.pt").write_bytes(b"teacher")
    datalist = tmp_path / "fold0.json"
    datalist.write_text(json.dumps({"training": [], "test": []}))
    out = tmp_path / "bundles" / "f0"
    assert write_fold(unit, datalist, out) == [], "no bundles before the reference pruned model exists"

    _compressed(unit, "baseline_taylor_50_iterative", 50, b"p50")
    _compressed(unit, "baseline_taylor_75_iterative", 75, b"p75")
    written = dict(write_fold(unit, datalist, out))
    assert set(written) == {"baseline", "pruned", "pruned_taylor_75_iterative"}
    assert (written["pruned_taylor_75_iterative"] / "models" / "model.pt").read_bytes() == b"p75"
    baseline_inference = json.loads((BASELINE / "configs" / "inference.json").read_text())
    small = json.loads((written["pruned"] / "configs" / "inference.json").read_text())
    assert small["network_def"] == {"width": 50} and small["backend"] == baseline_inference["backend"]
    assert "manifest.json" in {p.name for p in (written["baseline"] / "models").iterdir()}

    (written["pruned"] / "models" / "model.onnx").write_bytes(b"export")  # an export of the current weights
    (unit / "baseline_taylor_75_iterative" / "raagr2_pruned_taylor_75" / "models" / "model.pt").write_bytes(b"new")
    write_fold(unit, datalist, out)
    assert (written["pruned"] / "models" / "model.onnx").is_file(), "a bundle of the same weights keeps its exports"
    assert (written["pruned_taylor_75_iterative"] / "models" / "model.pt").read_bytes() == b"new"
