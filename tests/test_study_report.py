"""The compression-study report: Markdown content, linked figures, missing parts and the Pareto front."""

from __future__ import annotations

import copy
import math
import re

import pytest

from benchmarks.study.report import pareto_front, render_study_markdown, write_study_report

REGIONS = ("wt", "tc", "et")
PATIENTS = [f"P{i}" for i in range(5)]
WILCOXON_N5 = (
    "With n = 5 patients the smallest two-sided exact Wilcoxon p is 0.0625 so no difference can reach p < 0.05"
)


def _stats(values):
    values = [float(v) for v in values]
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1))
    ordered = sorted(values)
    return {"mean": mean, "std": sd, "min": ordered[0], "max": ordered[-1], "median": ordered[2], "n": len(values)}


def _model(label, kind, offset, params, macs, latency=True):
    per_case = []
    for i, patient in enumerate(PATIENTS):
        row = {"case": f"{patient}_t0", "patient": patient, "fold": i % 5, "seed": 0}
        for j, region in enumerate(REGIONS):
            row[f"{region}_dice"] = 0.9 - 0.1 * j - offset + 0.01 * i
            row[f"{region}_hd95"] = 3.0 + j + 10 * offset + 0.2 * i
        per_case.append(row)
    summary = {}
    for region in REGIONS:
        for metric in ("dice", "hd95"):
            summary[f"{region}_{metric}"] = _stats([c[f"{region}_{metric}"] for c in per_case])
    return {
        "label": label,
        "kind": kind,
        "variant": "baseline",
        "method": None if kind in ("teacher", "control") else "depgraph",
        "ratio": None if kind in ("teacher", "control") else 0.3,
        "schedule": None,
        "epochs_total": 20,
        "parameters": params,
        "macs_per_slice": macs,
        "latency": (
            {
                "backend": "torch",
                "volume_s_median": macs / 1e10,
                "volume_s": [0.9 * macs / 1e10, macs / 1e10, 1.2 * macs / 1e10],
                "repeats": 3,
            }
            if latency
            else None
        ),
        "per_case": per_case,
        "summary": summary,
        "vs_reference": None,
    }


def _comparison(delta):
    out = {}
    for region in REGIONS:
        for metric, sign in (("dice", -1.0), ("hd95", 10.0)):
            d = sign * delta
            out[f"{region}_{metric}"] = {
                "delta_mean": d,
                "ci": {"mean": d, "low": d - 0.01, "high": d + 0.01, "n": 5, "confidence": 0.95},
                "wilcoxon": {"p_value": 0.0625 if delta else 1.0, "n": 5, "method": "exact"},
            }
    return out


def _results():
    models = {
        "teacher_baseline": _model("Teacher", "teacher", 0.0, 8_911_301, 30_000_000_000),
        "pruned_depgraph_30": _model("DepGraph 30 %", "compressed", 0.02, 4_455_650, 15_000_000_000),
        "control_small": _model("Small from scratch", "control", 0.05, 4_400_000, 14_000_000_000),
        "int8_teacher": _model("Teacher INT8", "quantized", 0.01, 8_911_301, 30_000_000_000, latency=False),
        "pruned_taylor_50": _model("Taylor 50 %", "compressed", 0.04, 2_200_000, 8_000_000_000),
    }
    for model_id, model in models.items():
        if model_id != "teacher_baseline":
            model["vs_reference"] = _comparison(0.03)
    layers = ["enc1", "enc2", "bottleneck", "dec2", "dec1"]
    return {
        "title": "RAAGR2-Net compression study",
        "preset": "smoke",
        "data": {
            "dataset_dir": "shared/data/tcga_lgg_brainles",
            "scored_patients": PATIENTS,
            "extra_training_cases": ["X1"],
            "attribution": "Data: **TCGA-LGG** (CC BY 3.0), see <https://example.org/licence>.",
        },
        "machine": {
            "cpu_model": "Test CPU",
            "flags": ["avx2", "avx512_bf16"],
            "torch_threads": 4,
            "bf16": {"train_step_fp32_s": 1.0, "train_step_bf16_s": 0.8, "speedup": 1.25, "used": True},
        },
        "protocol": {
            "folds": 5,
            "seeds": [0],
            "epochs_teacher": 10,
            "epochs_finetune": 5,
            "scored": "out-of-fold validation patient of each fold",
            "hd95_definition": {"name": "hd95_symmetric", "description": "95th percentile of both directions"},
            "inference": "sliding window over the volume",
        },
        "reference": "teacher_baseline",
        "models": models,
        "postprocessing": {
            "none": {"options": {}, "summary": models["teacher_baseline"]["summary"], "vs_none": None},
            "largest_component": {
                "options": {"keep_largest": True},
                "summary": models["teacher_baseline"]["summary"],
                "vs_none": _comparison(0.0),
            },
        },
        "cka": {
            "pruned_depgraph_30": {
                "reference": "teacher_baseline",
                "row_layers": layers,
                "col_layers": layers,
                "matrix": [[1.0 - 0.15 * abs(i - j) for j in range(5)] for i in range(5)],
                "diagonal": [0.95, 0.9, 0.8, 0.85, 0.9],
            },
            "pruned_taylor_50": {
                "reference": "teacher_baseline",
                "row_layers": layers,
                "col_layers": layers[:4],
                "matrix": [[0.5 + 0.1 * ((i + j) % 3) for j in range(4)] for i in range(5)],
                "diagonal": [0.7, 0.6, 0.5],
            },
        },
        "sources": {"results_json": "study_results_smoke.json"},
    }


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    results = _results()
    path = write_study_report(results, out)
    return results, path, path.read_text(encoding="utf-8")


def test_markdown_names_every_model_the_wilcoxon_limit_and_the_source(report):
    results, path, text = report
    assert path.name == "study_report.md" and path.is_file()
    for model in results["models"].values():
        assert model["label"] in text
    assert WILCOXON_N5 in text
    assert "study_results_smoke.json" in text
    assert results["data"]["attribution"] in text
    assert "## Against the reference" in text and "## Post-processing" in text and "CKA" in text
    assert "largest_component" in text and "Test CPU" in text and "1.25 x" in text
    # teacher/control first, then compressed, then quantized in the models table
    order = [text.index(f"| {label} |") for label in ("Teacher", "Small from scratch", "DepGraph 30 %", "Teacher INT8")]
    assert order == sorted(order)
    # mean diagonal CKA of the first model: mean(0.95, 0.9, 0.8, 0.85, 0.9) = 0.88
    assert "0.880" in text
    # Dice deltas are shown in points: -0.03 -> -3.00; a zero difference never prints as "-0.00"
    assert "-3.00" in text and "-0.00" not in text
    # latency median (min–max) of the teacher: 3.00 (2.70–3.60)
    assert "3.00 (2.70–3.60)" in text


def test_every_linked_png_exists_and_is_not_empty(report):
    _, path, text = report
    links = re.findall(r"\]\(([^)]+\.png)\)", text)
    names = set(links)
    assert {"pareto_dice_vs_macs.png", "pareto_dice_vs_latency.png", "per_case_dice.png", "cka_diagonal.png"} <= names
    assert {"cka_pruned_depgraph_30.png", "cka_pruned_taylor_50.png"} <= names
    for name in names:
        png = path.parent / name
        assert png.is_file() and png.stat().st_size > 1024, name
    assert not list(path.parent.glob(".tmp_*"))


def test_model_without_latency_is_listed_with_na(report):
    _, _, text = report
    row = next(line for line in text.splitlines() if line.startswith("| Teacher INT8 |"))
    assert row.split(" | ")[4] == "n/a"


def test_no_latency_anywhere_skips_the_latency_figure(tmp_path):
    results = _results()
    for model in results["models"].values():
        model["latency"] = None
    del results["cka"], results["postprocessing"]
    text = write_study_report(results, tmp_path).read_text()
    assert "pareto_dice_vs_latency.png" not in text and not (tmp_path / "pareto_dice_vs_latency.png").exists()
    assert (tmp_path / "pareto_dice_vs_macs.png").is_file()
    assert "## Post-processing" not in text and "cka_" not in text


def test_nan_and_missing_values_render_as_na():
    results = _results()
    teacher = results["models"]["teacher_baseline"]
    teacher["summary"]["wt_hd95"] = {"mean": float("nan"), "std": float("nan")}
    results["models"]["pruned_depgraph_30"]["vs_reference"]["wt_hd95"]["delta_mean"] = None
    results["models"]["pruned_depgraph_30"]["vs_reference"]["wt_hd95"]["ci"]["mean"] = float("nan")
    text = render_study_markdown(results)
    row = next(line for line in text.splitlines() if line.startswith("| Teacher |"))
    assert row.split(" | ")[8] == "n/a"  # WT HD95 column
    delta = next(line for line in text.splitlines() if line.startswith("| DepGraph 30 % | WT |"))
    assert delta.split(" | ")[5] == "n/a"


def test_minimal_results_render(tmp_path):
    results = copy.deepcopy(_results())
    for key in ("machine", "protocol", "postprocessing", "cka", "sources", "data"):
        results.pop(key)
    for model in results["models"].values():
        model["macs_per_slice"] = None
    text = write_study_report(results, tmp_path).read_text()
    assert "Teacher" in text and "n/a" in text and "pareto_dice_vs_macs.png" not in text


def test_pareto_front_hand_example():
    # (x = cost, minimise; y = Dice, maximise)
    points = [(1.0, 0.5), (2.0, 0.7), (2.0, 0.6), (3.0, 0.7), (0.5, 0.2), (float("nan"), 1.0), (1.0, 0.5)]
    # (2, 0.6) is dominated by (2, 0.7); (3, 0.7) by (2, 0.7); NaN is never on the front; duplicates both stay
    assert pareto_front(points) == [4, 0, 6, 1]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 1.0)]) == [0]
