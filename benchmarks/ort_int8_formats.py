"""Which ONNX Runtime INT8 flavour to ship: U8S8 vs S8S8 activations, QDQ vs QOperator graphs, on this CPU.

    python -m benchmarks.ort_int8_formats --bundle TEACHER --data ../shared/data/upenn_gbm --datalist DATALIST \
        [--calibration-slices 64] [--repeats 3] [--json benchmarks/results/ort_int8_formats.json]

The bundle's trained network is exported once to ONNX (FP32) and quantised four ways
(:func:`raagr2_tools.shipping.quantize_int8`, calibrated on real slices of the datalist's ``training`` patients).
Each model and the FP32 one are timed on a batch of 8 real 240x240 slices of the ``test`` patients (median of
``--repeats`` after one warm-up; ONNX Runtime CPU provider, its default threads) and segment every ``test`` case
through the bundle's inferer (slices without brain skipped) and post-processing; agreement is the per-region
Dice of each INT8 label map against the FP32 one (WT/TC/ET; empty vs empty = 1). The shipped flavour is the
fastest whose worst agreement is >= ``--threshold``. Prints a Markdown table and writes the JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from custom_modules.constants import REGION_DISPLAY_ORDER
from custom_modules.files import write_json
from custom_modules.handlers import load_state_dict_checked, load_weights
from custom_modules.inference import BrainSliceInferer, OnnxRuntimeNetwork
from custom_modules.transforms import LabelMapPostprocessing, delivered_regions
from raagr2_tools.authoring.config import bundle_network, bundle_parser
from raagr2_tools.reports.tables import markdown_table
from raagr2_tools.shipping import export_onnx, quantize_int8
from raagr2_tools.shipping.cases import load_cases, pad_to_multiple, sample_slices

from .machine import machine_description

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "ort_int8_formats.json"
FLAVOURS = [("uint8", "qdq"), ("int8", "qdq"), ("uint8", "qoperator"), ("int8", "qoperator")]
NAMES = {"uint8": "U8S8", "int8": "S8S8"}


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ort_int8_formats", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--datalist", type=Path, required=True)
    parser.add_argument("--split", default="test", help="datalist list of the timed and scored cases")
    parser.add_argument("--calibration-slices", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=0.99)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    bundle = args.bundle.resolve()
    net = bundle_network(bundle)
    weights = bundle / "models" / "model.pt"
    load_state_dict_checked(net, load_weights(weights, "cpu"), weights)
    net.eval()
    options = LabelMapPostprocessing(
        *(
            bundle_parser(bundle).get_parsed_content(k)
            for k in ("keep_largest_component", "min_component_voxels", "et_min_voxels")
        )
    )
    calibration = list(load_cases(bundle, args.data, args.datalist, "training"))
    tests = list(load_cases(bundle, args.data, args.datalist, args.split))
    cal_slices, _ = sample_slices(calibration, args.calibration_slices, 0.5)
    batch = torch.from_numpy(pad_to_multiple(np.stack(sample_slices(tests, 8, 0.5)[0])))
    inferer = BrainSliceInferer(roi_size=(240, 240), sw_batch_size=8, skip_empty_slices=True)
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = export_onnx(net, Path(tmp) / "model.onnx", (1, 4, 64, 64))
        models = {"FP32": fp32_path}
        for activations, fmt in FLAVOURS:
            name = f"{NAMES[activations]} {fmt.upper() if fmt == 'qdq' else 'QOperator'}"
            print(f"quantising {name}", file=sys.stderr, flush=True)
            path = Path(tmp) / f"{activations}_{fmt}.onnx"
            quantize_int8(fp32_path, path, cal_slices, activations=activations, quant_format=fmt)
            models[name] = path
        masks: dict[str, list[torch.Tensor]] = {}
        for name, path in models.items():
            runner = OnnxRuntimeNetwork(path, providers=["CPUExecutionProvider"])
            with torch.no_grad():
                runner(batch)
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    runner(batch)
                    times.append((time.perf_counter() - t0) * 1e3 / batch.shape[0])
                masks[name] = [
                    delivered_regions(torch.sigmoid(inferer(c["image"][None], runner)[0]) > 0.5, options) for c in tests
                ]
            rows[name] = {
                "ms_per_slice": {
                    "median": statistics.median(times),
                    "min": min(times),
                    "max": max(times),
                    "times": times,
                }
            }
            print(f"  {name}: {statistics.median(times):.1f} ms per slice", file=sys.stderr, flush=True)
        for name in models:
            if name == "FP32":
                continue
            per_case = [
                {r: _dice(m[i], f[i]) for i, r in enumerate(("tc", "wt", "et"))}
                for m, f in zip(masks[name], masks["FP32"])
            ]
            rows[name]["agreement"] = per_case
            rows[name]["worst_agreement"] = min(min(c.values()) for c in per_case)
    keeps = [n for n in rows if n != "FP32" and rows[n]["worst_agreement"] >= args.threshold]
    chosen = min(keeps, key=lambda n: rows[n]["ms_per_slice"]["median"]) if keeps else None
    fp32_ms = rows["FP32"]["ms_per_slice"]["median"]
    table = [
        [
            name,
            f"{r['ms_per_slice']['median']:.1f} [{r['ms_per_slice']['min']:.1f}, {r['ms_per_slice']['max']:.1f}]",
            f"{fp32_ms / r['ms_per_slice']['median']:.2f}x",
            " / ".join(f"{min(c[g] for c in r['agreement']):.4f}" for g in REGION_DISPLAY_ORDER)
            if "agreement" in r
            else "reference",
        ]
        for name, r in rows.items()
    ]
    markdown = markdown_table(
        ["model", "ms per slice (batch 8), median [min, max]", "speed-up vs FP32", "worst agreement WT / TC / ET"],
        table,
    )
    markdown += (
        f"\n{len(tests)} test cases; shipped: **{chosen or 'none keeps the threshold'}** "
        f"(fastest with worst agreement >= {args.threshold}).\n"
    )
    result = {
        "benchmark": "ort_int8_formats",
        "command": "python -m benchmarks.ort_int8_formats " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_description("cpu"),
        "test_cases": [c["case_id"] for c in tests],
        "calibration_patients": sorted({c["patient_id"] for c in calibration}),
        "rows": rows,
        "chosen": chosen,
        "threshold": args.threshold,
        "wall_time_s": time.perf_counter() - start,
        "markdown": markdown,
    }
    write_json(args.json, result, indent=2)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
