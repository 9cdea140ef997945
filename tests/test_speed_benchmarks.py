"""The decisions the speed benchmarks make from their measurements: the crop margin chosen, the targets judged,
the reduced precisions pooled over folds (pure functions on hand-made results)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.crop_margin import summarise
from benchmarks.end_to_end_report import render, targets
from benchmarks.export_checks import pool


def _crop_case(values: dict[str, float]) -> dict:
    return {
        name: {"tc_dice": v, "wt_dice": v, "et_dice": v, "min_dice": v, "pixels_run_fraction": 0.4}
        for name, v in values.items()
    }


def test_the_chosen_crop_margin_is_the_smallest_that_agrees_on_every_case() -> None:
    seconds = {n: {"median": 1.0, "min": 1.0, "max": 1.0} for n in ("full", "skip", "crop8", "crop16", "crop32")}
    result = {
        "settings": ["skip", "crop8", "crop16", "crop32"],
        "cases": [
            _crop_case({"skip": 1.0, "crop8": 0.99, "crop16": 0.9995, "crop32": 1.0}),
            _crop_case({"skip": 1.0, "crop8": 0.999, "crop16": 0.9985, "crop32": 0.9999}),
        ],
        "timing": {"seconds": seconds},
    }
    summary = summarise(result, [8, 16, 32], 0.999)
    assert summary["chosen_margin"] == 32  # 16 agrees on one case only
    assert summary["rows"]["crop16"]["cases_below_threshold"] == 1
    assert summarise(result, [8, 16, 32], 0.99999)["chosen_margin"] is None


def _row(variant: str, backend: str, option: str, seconds: float, agreement: float = 1.0, dice: float = 0.8) -> dict:
    return {
        "variant": variant,
        "backend": backend,
        "option": option,
        "seconds": {"median": seconds, "min": seconds, "max": seconds, "times": [seconds] * 3},
        "slices_run": 130,
        "pixels_run_fraction": 0.5,
        "crop_margin": None,
        "agreement": {f"{r}_dice": agreement for r in ("wt", "tc", "et")},
        "dice_vs_label": {f"{r}_dice": dice for r in ("wt", "tc", "et")},
    }


@pytest.mark.parametrize(
    ("seconds", "agreement", "dice", "met"),
    [
        (
            1.0,
            0.995,
            0.795,
            {"speedup_vs_baseline": True, "speedup_vs_segresnet": True, "agreement": True, "dice_points": True},
        ),
        (
            4.0,
            0.98,
            0.78,
            {"speedup_vs_baseline": False, "speedup_vs_segresnet": False, "agreement": False, "dice_points": False},
        ),
    ],
)
def test_targets_are_judged_on_the_default_row(seconds, agreement, dice, met) -> None:
    result = {
        "bundles": {"baseline": "b", "pruned": "p"},
        "case": "c",
        "repeats": 3,
        "threads": 2,
        "machine": {"cpu_model": "cpu", "cpu_cores_usable": 2, "cpu_flags": ["avx2"]},
        "rows": [
            _row("baseline", "torch", "full", 50.0),
            _row("pruned", "openvino_int8", "default", seconds, agreement, dice),
        ],
        "segresnet": {"seconds": {"median": 16.0, "min": 16.0, "max": 16.0}, "params": 1},
    }
    (judged,) = targets(result)
    assert judged["met"] == met and judged["speedup_vs_baseline"] == pytest.approx(50.0 / seconds)
    assert "pruned" in render(result)


def test_the_agreement_target_holds_the_options_equal_when_the_torch_row_exists() -> None:
    default = {**_row("pruned", "openvino", "default", 1.0, agreement=0.97), "ran_options": "skip"}
    default["agreement_same_options"] = {f"{r}_dice": 1.0 for r in ("wt", "tc", "et")}
    result = {
        "bundles": {"baseline": "b", "pruned": "p"},
        "rows": [_row("baseline", "torch", "full", 50.0), default],
        "segresnet": None,
    }
    (judged,) = targets(result)
    assert judged["min_agreement_vs_own_fp32"] == 1.0 and judged["met"]["agreement"]
    del default["agreement_same_options"]
    (judged,) = targets(result)
    assert judged["min_agreement_vs_own_fp32"] == 0.97 and not judged["met"]["agreement"]


def test_export_checks_pool_every_held_out_case_per_variant() -> None:
    def report(fp32: float, int8: float) -> dict:
        case = {
            "case_id": f"case{fp32}",
            "torch_fp32": {f"{r}_dice": fp32 for r in ("wt", "tc", "et")},
            "onnx_int8": {
                **{f"{r}_dice": int8 for r in ("wt", "tc", "et")},
                **{f"{r}_dice_vs_fp32": 0.99 for r in ("wt", "tc", "et")},
            },
        }
        return {"dice": {"cases": [case]}, "checks": {"onnxruntime_int8": {"passed": int8 >= fp32 - 0.01}}}

    folds = [
        {"index": 0, "variant": "baseline", "report": report(0.80, 0.79)},
        {"index": 1, "variant": "baseline", "report": report(0.60, 0.62)},
    ]
    summary = pool(folds)["baseline"]["summary"]["onnx_int8"]
    assert summary["n_cases"] == 2 and summary["checks_passed"] == 2
    assert summary["wt"]["delta_points_mean"] == pytest.approx(0.5)
    assert summary["wt"]["delta_points_min"] == pytest.approx(-1.0) and summary["wt"][
        "delta_points_max"
    ] == pytest.approx(2.0)


def benchmark(name: str, argv: list[str]) -> None:
    """``python -m benchmarks.<name> <argv>`` as a user types it, in its own process (OpenVINO, NNCF and the
    thread settings of a benchmark stay out of the test process); fails with the child's error output."""
    import subprocess
    import sys

    command = [sys.executable, "-m", f"benchmarks.{name}", *argv]
    result = subprocess.run(command, cwd=Path(__file__).parents[1], capture_output=True, text=True)
    assert result.returncode == 0, f"benchmarks.{name} failed:\n{result.stderr[-3000:]}"


@pytest.mark.e2e
def test_speed_benchmarks_run_on_an_exported_tiny_bundle(phantom_dataset, tmp_path) -> None:
    """The four speed benchmarks end to end on phantoms: a tiny baseline, exported, then measured (seconds)."""
    import json

    import torch
    from conftest import BASELINE, TINY, bake_settings

    from custom_modules.artefacts import record_artefacts
    from raagr2_tools.authoring.config import bundle_network
    from raagr2_tools.jobs.bundle_cli import run_bundle

    data, datalist = phantom_dataset
    bundle = bake_settings(BASELINE, tmp_path / "tiny", TINY)
    (bundle / "models").mkdir()
    torch.manual_seed(0)
    torch.save(bundle_network(bundle).state_dict(), bundle / "models" / "model.pt")
    record_artefacts(bundle / "models", {"model.pt": None})
    settings = {
        "dataset_dir": data,
        "data_list_file_path": datalist,
        "formats": "['onnx', 'onnx_int8', 'openvino', 'openvino_int8']",
        "calibration_slices": 4,
        "eval_split": "validation",
        "eval_cases": 1,
        "parity_slices": 2,
        "timing_batch": 2,
    }
    run_bundle([bundle / "configs" / "export.json"], "export", {"bundle_root": bundle, **settings}, cwd=tmp_path)

    out = tmp_path / "e2e.json"
    case = json.loads(datalist.read_text())["validation"][0]["case_id"]
    argv = ["--data", str(data), "--case", case, "--bundle", f"a={bundle}", "--bundle", f"b={bundle}"]
    argv += ["--backends", "torch", "openvino", "--repeats", "1", "--amx-child", "no"]
    benchmark("end_to_end", [*argv, "--json", str(out)])
    result = json.loads(out.read_text())
    options = {(r["variant"], r["option"]) for r in result["rows"]}
    assert {("a", "full"), ("a", "default"), ("b", "full"), ("b", "skip"), ("b", "crop"), ("b", "default")} <= options
    assert ("a", "skip") not in options, "the reference runs its full rows only"
    default = next(r for r in result["rows"] if r["variant"] == "b" and r["option"] == "default")
    assert default["backend"] in (
        "torch",
        "openvino",
        "openvino_bf16",
        "openvino_int8",
        "onnxruntime",
        "onnxruntime_int8",
    )
    assert out.with_suffix(".png").is_file() and "Targets" in result["markdown"]
    assert result["segresnet"]["seconds"]["median"] > 0 and "SegResNet (zoo configuration" in result["markdown"]

    margins = tmp_path / "margins.json"
    argv = ["--data", str(data), "--fold", str(bundle), str(datalist), "--split", "validation", "--margins", "0", "8"]
    benchmark("crop_margin", [*argv, "--repeats", "1", "--json", str(margins)])
    summary = json.loads(margins.read_text())["summary"]
    assert set(summary["rows"]) == {"skip", "crop0", "crop8"} and margins.with_suffix(".png").is_file()

    flavours = tmp_path / "flavours.json"
    argv = ["--bundle", str(bundle), "--data", str(data), "--datalist", str(datalist), "--split", "validation"]
    benchmark("ort_int8_formats", [*argv, "--calibration-slices", "4", "--repeats", "1", "--json", str(flavours)])
    rows = json.loads(flavours.read_text())["rows"]
    assert set(rows) == {"FP32", "U8S8 QDQ", "S8S8 QDQ", "U8S8 QOperator", "S8S8 QOperator"}
