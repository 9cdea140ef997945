"""What each reduced precision costs on real held-out patients: the export's checks, pooled over folds.

    python -m benchmarks.export_checks --data ../shared/data/upenn_gbm \
        --fold VARIANT BUNDLE DATALIST [--fold ...] [--json benchmarks/results/export_checks_upenn.json]

Each ``--fold`` is a trained bundle and the patient-level datalist it was trained with. The documented export
command runs on it (``python -m monai.bundle run export ...``: INT8 calibrated on the fold's ``training``
patients, every format checked on its ``test`` patients, which the model never saw), unless the bundle already
holds a verified export of its current weights. The per-case rows of every fold's ``export_report.json`` are then
pooled per variant: for each reduced precision (ONNX Runtime INT8, OpenVINO BF16 and INT8; FP16, for GPUs, is not
exported here) the
WT/TC/ET Dice against the labels next to PyTorch FP32's, the change in Dice points (mean, sd, range and a paired
bootstrap 95 % CI over patients) and the mask agreement with PyTorch FP32; plus each fold's check verdict per
backend. Timings are left to ``benchmarks.end_to_end`` (measured alone on the machine). Prints a Markdown table
and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from custom_modules.artefacts import verify_artefact
from custom_modules.errors import ArtefactError
from custom_modules.files import write_json
from raagr2_tools.analysis.statistics import paired_bootstrap_ci
from raagr2_tools.jobs.bundle_cli import run_bundle
from raagr2_tools.reports.tables import markdown_table

from .machine import machine_description

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "export_checks_upenn.json"
REGIONS = ("wt", "tc", "et")
REDUCED = ("onnx_int8", "openvino_bf16", "openvino_int8")


def _exported(bundle: Path) -> bool:
    """True when the bundle holds an export report and timing record of its current weights."""
    try:
        for name in ("export_report.json", "backends.json", "model_openvino.xml"):
            if verify_artefact(bundle / "models" / name) is None:
                return False
    except ArtefactError:
        return False
    return True


def export(bundle: Path, data: Path, datalist: Path) -> float:
    """Run the documented export on ``bundle`` (calibrate on ``training``, check on ``test``); wall seconds."""
    if _exported(bundle):
        print(f"{bundle}: verified export of the current weights present, reused", file=sys.stderr, flush=True)
        return 0.0
    overrides = {
        "bundle_root": bundle,
        "dataset_dir": data,
        "data_list_file_path": datalist,
        "calibration_split": "training",
        "eval_split": "test",
        "eval_cases": 100,
        # FP16 is for GPU execution providers; on the CPU it is emulated and says nothing about deployment
        "formats": ["torchscript", "onnx", "onnx_int8", "openvino", "openvino_int8"],
    }
    return run_bundle([bundle / "configs" / "export.json"], "export", overrides, cwd=bundle)


def pool(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant and reduced precision: per-region Dice change and agreement over every held-out case."""
    variants: dict[str, Any] = {}
    for fold in folds:
        entry = variants.setdefault(fold["variant"], {"cases": [], "checks": []})
        report = fold["report"]
        entry["cases"] += [{"fold": fold["index"], **c} for c in report["dice"]["cases"]]
        entry["checks"].append({"fold": fold["index"], **report["checks"]})
    for entry in variants.values():
        summary: dict[str, Any] = {}
        for name in REDUCED:
            rows = [c for c in entry["cases"] if name in c]
            if not rows:
                continue
            summary[name] = {}
            for region in REGIONS:
                key = f"{region}_dice"
                fp32 = [c["torch_fp32"][key] for c in rows if key in c["torch_fp32"]]
                reduced = [c[name][key] for c in rows if key in c[name]]
                agreement = [c[name][f"{key}_vs_fp32"] for c in rows]
                block: dict[str, Any] = {
                    "agreement_mean": float(np.mean(agreement)),
                    "agreement_min": float(np.min(agreement)),
                }
                if fp32:
                    delta = 100 * (np.asarray(reduced) - np.asarray(fp32))
                    ci = paired_bootstrap_ci(delta)
                    block.update(
                        {
                            "fp32_mean": float(np.mean(fp32)),
                            "reduced_mean": float(np.mean(reduced)),
                            "delta_points_mean": float(delta.mean()),
                            "delta_points_sd": float(delta.std(ddof=1)) if len(delta) > 1 else 0.0,
                            "delta_points_min": float(delta.min()),
                            "delta_points_max": float(delta.max()),
                            "delta_points_ci95": [ci["low"], ci["high"]],
                        }
                    )
                summary[name][region] = block
            summary[name]["n_cases"] = len(rows)
            summary[name]["checks_passed"] = sum(bool(c.get(_backend(name), {}).get("passed")) for c in entry["checks"])
            summary[name]["folds"] = len(entry["checks"])
        entry["summary"] = summary
    return variants


def _backend(name: str) -> str:
    return "onnxruntime_int8" if name == "onnx_int8" else name


def render(variants: dict[str, Any]) -> str:
    header = ["variant", "precision", "cases", "checks passed"]
    header += [f"{r.upper()} Dice change (points), mean ± sd [min, max]" for r in REGIONS]
    header += [f"{r.upper()} agreement, mean (min)" for r in REGIONS]
    table = []
    for variant, entry in variants.items():
        for name, s in entry["summary"].items():
            cells = [variant, name, str(s["n_cases"]), f"{s['checks_passed']} of {s['folds']} folds"]
            for r in REGIONS:
                b = s[r]
                cells.append(
                    f"{b['delta_points_mean']:+.2f} ± {b['delta_points_sd']:.2f} "
                    f"[{b['delta_points_min']:+.2f}, {b['delta_points_max']:+.2f}]"
                    if "delta_points_mean" in b
                    else "n/a"
                )
            cells += [f"{s[r]['agreement_mean']:.4f} ({s[r]['agreement_min']:.4f})" for r in REGIONS]
            table.append(cells)
    return markdown_table(header, table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.export_checks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--fold", nargs=3, action="append", required=True, metavar=("VARIANT", "BUNDLE", "DATALIST"))
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    folds = []
    for index, (variant, bundle, datalist) in enumerate(args.fold):
        bundle, datalist = Path(bundle).resolve(), Path(datalist).resolve()
        seconds = export(bundle, args.data.resolve(), datalist)
        models = bundle / "models"
        folds.append(
            {
                "index": index,
                "variant": variant,
                "bundle": str(bundle),
                "datalist": str(datalist),
                "export_seconds": seconds,
                "report": json.loads((models / "export_report.json").read_text()),
            }
        )
    variants = pool(folds)
    result = {
        "benchmark": "export_checks",
        "command": "python -m benchmarks.export_checks " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_description("cpu"),
        "folds": [{k: v for k, v in f.items() if k != "report"} | {"checks": f["report"]["checks"]} for f in folds],
        "variants": variants,
        "wall_time_s": time.perf_counter() - start,
    }
    result["markdown"] = render(variants)
    write_json(args.json, result, indent=2)
    print(result["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
