import copy
import json
import math

import pytest

from raagr2_tools.reports.compression import (
    dice_delta_points,
    render_compression_markdown,
    write_compression_report,
)


def _report():
    return {
        "bundle": "raagr2_pruned_depgraph_30",
        "method": "depgraph",
        "criterion_reference": "Fang et al., CVPR 2023",
        "ratio": 0.3,
        "schedule": "iterative",
        "allocation": "uniform",
        "variant": "baseline",
        "teacher": "bundles/raagr2_baseline/models/model.pt",
        "flop_counter": "torch.utils.flop_counter.FlopCounterMode (FLOPs = 2 x MACs)",
        "input_shape": [1, 4, 192, 192],
        "complexity": {
            "teacher": {"params": 8_911_301, "nonzero_params": 8_911_301, "flops": 60_000_000_000},
            "pruned": {"params": 4_455_650, "nonzero_params": 4_455_600, "flops": 27_000_000_000},
        },
        "latency_ms": {"teacher": 120.5, "pruned": 61.25, "threads": 4},
        "layers": [
            {"name": "enc1.fuse.conv.0", "type": "Conv2d", "teacher_out_channels": 32, "kept_out_channels": 16},
            {"name": "dec2.proj", "type": "Conv2d", "teacher_out_channels": 64, "kept_out_channels": 48},
        ],
        "eval_split": "test",
        "cases": ["case_a", "case_b", "case_c"],
        "dice": {
            "teacher": {"wt": 0.9012, "tc": 0.8123, "et": 0.7777},
            "pruned_before_finetune": {"wt": 0.5, "tc": 0.4, "et": float("nan")},
            "finetuned": {"wt": 0.8899, "tc": 0.8200, "et": 0.7500},
        },
        "hd95": {
            "teacher": {"wt": 3.5, "tc": 4.25, "et": 2.0},
            "pruned_before_finetune": {"wt": 20.0, "tc": float("nan"), "et": 30.0},
            "finetuned": {"wt": 3.75, "tc": 4.0, "et": 2.5},
        },
        "steps": [
            {
                "step": 1,
                "target_ratio": 0.15,
                "layers": "all",
                "params": 6_500_000,
                "flops": 43_000_000_000,
                "onnx_max_abs_diff": 1.5e-6,
            },
            {
                "step": 2,
                "target_ratio": 0.3,
                "layers": ["enc1", "dec2"],
                "params": 4_455_650,
                "flops": 27_000_000_000,
                "onnx_max_abs_diff": 2.25e-6,
            },
        ],
        "snip": {
            "sparsity": 0.3,
            "masked_weights": 2_673_390,
            "zeros_before_finetune": 2_673_400,
            "zeros_after_finetune": 2_673_395,
        },
        "finetune": {
            "epochs_per_step": 5,
            "distillation": True,
            "alpha": 0.5,
            "temperature": 2.0,
            "feature_weight": 0.0,
        },
    }


def _row(md, first_cell):
    """Cells of the Markdown table row whose first cell is ``first_cell``."""
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in\n{md}")


def test_full_report_markdown():
    report = _report()
    md = render_compression_markdown(report)
    assert md.startswith("# Compression report: raagr2_pruned_depgraph_30")
    assert "depgraph (Fang et al., CVPR 2023)" in md
    assert "`bundles/raagr2_baseline/models/model.pt`" in md
    assert "yes (alpha 0.5, T 2, feature weight 0)" in md
    # complexity
    assert report["flop_counter"] in md and "1 x 4 x 192 x 192" in md
    assert _row(md, "parameters") == ["parameters", "8,911,301", "4,455,650", "50.0 %"]
    assert _row(md, "non-zero parameters")[2] == "4,455,600"
    assert _row(md, "GFLOPs") == ["GFLOPs", "60.000", "27.000", "45.0 %"]
    assert _row(md, "CPU latency (ms), 4 threads") == ["CPU latency (ms), 4 threads", "120.50", "61.25", "50.8 %"]
    # regions: split, case count, values, NaN, and the delta column
    assert "Split `test`, 3 cases" in md
    assert _row(md, "teacher")[1:7] == ["0.9012", "0.8123", "0.7777", "3.50", "4.25", "2.00"]
    before = _row(md, "pruned, before fine-tune")
    assert before[3] == "n/a" and before[5] == "n/a" and before[7] == ""
    after = _row(md, "pruned, after fine-tune")
    delta = dice_delta_points(report)
    expected = {r: 100 * (report["dice"]["finetuned"][r] - report["dice"]["teacher"][r]) for r in ("wt", "tc", "et")}
    assert delta == pytest.approx(expected)
    assert after[7] == f"WT {expected['wt']:+.2f}, TC {expected['tc']:+.2f}, ET {expected['et']:+.2f}"
    assert after[7] == "WT -1.13, TC +0.77, ET -2.77"
    # steps, layers, SNIP, figure link
    assert _row(md, "1") == ["1", "0.150", "all", "6,500,000", "43.000", "1.50e-06"]
    assert _row(md, "2")[2] == "enc1, dec2"
    assert _row(md, "`enc1.fuse.conv.0`") == ["`enc1.fuse.conv.0`", "Conv2d", "32", "16", "50.0 %"]
    assert _row(md, "`dec2.proj`")[4] == "75.0 %"
    assert "## SNIP (unstructured)" in md and _row(md, "masked weights")[1] == "2,673,390"
    assert "(compression_report.png)" in md


def test_optional_keys_missing():
    report = _report()
    for key in ("latency_ms", "snip", "criterion_reference", "finetune", "steps", "cases", "hd95"):
        del report[key]
    del report["dice"]["pruned_before_finetune"]
    report["complexity"]["pruned"]["flops"] = None
    md = render_compression_markdown(report, figure=None)
    assert "latency" not in md and "SNIP" not in md and ".png" not in md
    assert "No steps recorded." in md and "n/a cases" in md
    assert _row(md, "GFLOPs") == ["GFLOPs", "60.000", "n/a", "n/a"]
    assert _row(md, "teacher")[4:7] == ["n/a", "n/a", "n/a"]
    assert "pruned, before fine-tune" not in md
    assert _row(md, "pruned, after fine-tune")[7] == "WT -1.13, TC +0.77, ET -2.77"

    bare = render_compression_markdown({"bundle": "b"})
    assert bare.startswith("# Compression report: b") and "No evaluation results." in bare


def test_write_files_and_json_round_trip(tmp_path):
    report = _report()
    original = copy.deepcopy(report)
    paths = write_compression_report(report, tmp_path / "out", stem="run1")
    assert set(paths) == {"json", "markdown", "figure"}
    assert [p.name for p in paths.values()] == ["run1.json", "run1.md", "run1.png"]
    assert all(p.is_file() for p in paths.values())
    assert paths["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["figure"].stat().st_size > 10_000
    assert "(run1.png)" in paths["markdown"].read_text(encoding="utf-8")

    text = paths["json"].read_text(encoding="utf-8")
    assert "NaN" not in text and text.startswith("{\n    ")
    loaded = json.loads(text)
    assert loaded["dice"]["pruned_before_finetune"]["et"] is None
    assert loaded["hd95"]["pruned_before_finetune"]["tc"] is None
    # everything else round-trips unchanged, and the input dict is not modified
    loaded["dice"]["pruned_before_finetune"]["et"] = report["dice"]["pruned_before_finetune"]["et"]
    loaded["hd95"]["pruned_before_finetune"]["tc"] = report["hd95"]["pruned_before_finetune"]["tc"]
    assert json.dumps(loaded, sort_keys=True) == json.dumps(report, sort_keys=True)
    assert math.isnan(report["dice"]["pruned_before_finetune"]["et"])
    assert json.dumps(report, sort_keys=True) == json.dumps(original, sort_keys=True)


def test_write_minimal_report(tmp_path):
    paths = write_compression_report({"bundle": "b", "dice": {"teacher": {"wt": 0.9}}}, tmp_path)
    assert paths["figure"].stat().st_size > 0
    assert json.loads(paths["json"].read_text()) == {"bundle": "b", "dice": {"teacher": {"wt": 0.9}}}
