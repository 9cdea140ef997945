"""How much context a brain crop needs to be exact: crop margin vs label-map agreement vs time, on real
held-out patients, to choose the bundle's ``crop_margin``.

    python -m benchmarks.crop_margin --data ../shared/data/upenn_gbm \
        --fold TEACHER_BUNDLE DATALIST [--fold ...] [--split test] [--margins 0 8 16 24 32 48 64 96] \
        [--repeats 3] [--threshold 0.999] [--json benchmarks/results/crop_margin.json]

Each ``--fold`` names a trained bundle (``models/model.pt``) and the datalist it was trained with; its ``--split``
cases (patients the model never saw) are segmented by that model. Per case the reference is the full grid
(every slice, whole 240x240 slice: ``SliceInferer``); then slices without brain are skipped, and then each brain
slice is cropped to its brain box plus ``margin`` pixels per side (grown to multiples of 16) for each margin
(:class:`custom_modules.inference.BrainSliceInferer`). Agreement is the Dice of each delivered region (WT, TC,
ET of the label map the bundle writes, its post-processing as shipped; empty vs empty = 1) against the reference.
The network runs as the OpenVINO FP32 IR of the weights (checked against PyTorch, max |diff| <= 1e-4), the
exact fast path. The time is the inferer call on the first case, ``--repeats`` times, median and range
(``--repeats 0``: one call per case, median and range over the cases; end-to-end times with spread are
``benchmarks.end_to_end``'s).

The chosen margin is the smallest whose worst region agreement over all cases is >= ``--threshold``. Writes the
JSON (with the machine), a PNG of the curve beside it, and prints a Markdown table.
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
from custom_modules.inference import BrainSliceInferer, OpenVinoNetwork
from custom_modules.transforms import LabelMapPostprocessing, delivered_regions
from raagr2_tools.authoring.config import bundle_network, bundle_parser
from raagr2_tools.reports.tables import markdown_table
from raagr2_tools.shipping import export_onnx
from raagr2_tools.shipping.cases import load_cases
from raagr2_tools.shipping.openvino import export_openvino

from .machine import machine_description

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "crop_margin.json"
DEFAULT_MARGINS = (0, 8, 16, 24, 32, 48, 64, 96)


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    """Dice of two boolean maps; 1 when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def _openvino_runner(net: torch.nn.Module, folder: Path) -> OpenVinoNetwork:
    """The OpenVINO FP32 IR of ``net`` (via ONNX), checked against PyTorch on a random 240x240 batch."""
    export_onnx(net, folder / "model.onnx", (1, 4, 64, 64), exporter="torchscript")
    runner = OpenVinoNetwork(export_openvino(folder / "model.onnx", folder / "model.xml"), precision="fp32")
    probe = torch.randn(2, 4, 240, 240, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((runner(probe) - net(probe)).abs().max())
    if diff > 1e-4:
        raise RuntimeError(f"OpenVINO FP32 differs from PyTorch by {diff:.2e} (> 1e-4): not an exact reference")
    return runner


def _segment(inferer: BrainSliceInferer, runner: Any, image: torch.Tensor, options: LabelMapPostprocessing):
    """(C, H, W, D) -> ((3, H, W, D) bool delivered TC/WT/ET, seconds of the inferer call)."""
    start = time.perf_counter()
    with torch.no_grad():
        logits = inferer(image[None], runner)[0]
    seconds = time.perf_counter() - start
    return delivered_regions(torch.sigmoid(logits) > 0.5, options), seconds


def measure(data: Path, folds: list[tuple[Path, Path]], split: str, margins: list[int], repeats: int) -> dict[str, Any]:
    options_names = ("keep_largest_component", "min_component_voxels", "et_min_voxels")
    cases_out: list[dict[str, Any]] = []
    timing: dict[str, Any] = {}
    settings = {"skip": {"skip_empty_slices": True}}
    settings.update({f"crop{m}": {"crop_to_brain": True, "margin": m} for m in margins})
    for fold_index, (bundle, datalist) in enumerate(folds):
        parser = bundle_parser(bundle)
        options = LabelMapPostprocessing(*(parser.get_parsed_content(k) for k in options_names))
        net = bundle_network(bundle)
        weights = bundle / "models" / "model.pt"
        load_state_dict_checked(net, load_weights(weights, "cpu"), weights)
        net.eval()
        with tempfile.TemporaryDirectory() as tmp:
            runner = _openvino_runner(net, Path(tmp))
            full = BrainSliceInferer(roi_size=(240, 240), sw_batch_size=8)
            inferers = {
                name: BrainSliceInferer(roi_size=(240, 240), sw_batch_size=8, **s) for name, s in settings.items()
            }
            for case in load_cases(bundle, data, datalist, split):
                print(f"fold {fold_index}: {case['case_id']}", file=sys.stderr, flush=True)
                reference, full_s = _segment(full, runner, case["image"], options)
                row: dict[str, Any] = {"fold": fold_index, "bundle": str(bundle), "case_id": case["case_id"]}
                row["full"] = {
                    "seconds": full_s,
                    **{f"{r}_voxels": int(reference[i].sum()) for i, r in enumerate(("tc", "wt", "et"))},
                }
                for name, inferer in inferers.items():
                    regions, seconds = _segment(inferer, runner, case["image"], options)
                    agreement = {f"{r}_dice": _dice(regions[i], reference[i]) for i, r in enumerate(("tc", "wt", "et"))}
                    row[name] = {
                        **agreement,
                        "min_dice": min(agreement.values()),
                        "voxels_differing": int((regions != reference).any(dim=0).sum()),
                        "seconds": seconds,
                        "pixels_run_fraction": inferer.last_stats["pixels_run_fraction"],
                    }
                cases_out.append(row)
                if not timing and repeats > 0:  # repeats on the first case: full grid and every setting, interleaved
                    runs: dict[str, list[float]] = {"full": [], **{n: [] for n in inferers}}
                    for _ in range(repeats):
                        runs["full"].append(_segment(full, runner, case["image"], options)[1])
                        for name, inferer in inferers.items():
                            runs[name].append(_segment(inferer, runner, case["image"], options)[1])
                    timing = {
                        "case_id": case["case_id"],
                        "repeats": repeats,
                        "seconds": {
                            n: {"median": statistics.median(t), "min": min(t), "max": max(t), "times": t}
                            for n, t in runs.items()
                        },
                    }
    if not timing:  # --repeats 0: one run per case; the spread is over cases (their sizes differ)
        names = ["full", *settings]
        per_case = {n: [c[n]["seconds"] for c in cases_out] for n in names}
        timing = {
            "case_id": "every case, one run each",
            "repeats": 0,
            "seconds": {
                n: {"median": statistics.median(t), "min": min(t), "max": max(t), "times": t}
                for n, t in per_case.items()
            },
        }
    return {"cases": cases_out, "timing": timing, "settings": list(settings)}


def summarise(result: dict[str, Any], margins: list[int], threshold: float) -> dict[str, Any]:
    """Per setting: worst and mean region agreement over the cases, median time; the chosen margin."""
    rows = {}
    for name in result["settings"]:
        values = [c[name]["min_dice"] for c in result["cases"]]
        per_region = {r: min(c[name][f"{r}_dice"] for c in result["cases"]) for r in REGION_DISPLAY_ORDER}
        rows[name] = {
            "worst_dice": min(values),
            "mean_min_dice": float(np.mean(values)),
            **{f"worst_{r}_dice": v for r, v in per_region.items()},
            "cases_below_threshold": sum(v < threshold for v in values),
            "median_seconds": result["timing"]["seconds"][name]["median"],
        }
    exact = [m for m in margins if rows[f"crop{m}"]["worst_dice"] >= threshold]
    return {"threshold": threshold, "rows": rows, "chosen_margin": min(exact) if exact else None}


def render(result: dict[str, Any]) -> str:
    summary, timing = result["summary"], result["timing"]["seconds"]
    header = [
        "setting",
        "worst WT / TC / ET Dice vs full grid",
        "cases below",
        "time (s), median [min, max]",
        "pixels run",
    ]
    rows = [["full grid", "1 / 1 / 1 (reference)", "0", _time(timing["full"]), "100 %"]]
    for name, row in summary["rows"].items():
        pixels = float(np.mean([c[name]["pixels_run_fraction"] for c in result["cases"]]))
        rows.append(
            [
                "skip empty slices" if name == "skip" else f"skip + crop, margin {name[4:]} px",
                " / ".join(f"{row[f'worst_{r}_dice']:.4f}" for r in REGION_DISPLAY_ORDER),
                str(row["cases_below_threshold"]),
                _time(timing[name]),
                f"{100 * pixels:.0f} %",
            ]
        )
    chosen = summary["chosen_margin"]
    text = markdown_table(header, rows)
    text += (
        f"\n{len(result['cases'])} held-out cases; threshold {summary['threshold']}: "
        + (f"chosen margin **{chosen} px**" if chosen is not None else "no margin reached it")
        + f"; times on {result['timing']['case_id']}, {result['timing']['repeats']} repeats.\n"
    )
    return text


def _time(entry: dict[str, Any]) -> str:
    return f"{entry['median']:.2f} [{entry['min']:.2f}, {entry['max']:.2f}]"


def plot(result: dict[str, Any], margins: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for region in REGION_DISPLAY_ORDER:
        left.plot(
            margins,
            [result["summary"]["rows"][f"crop{m}"][f"worst_{region}_dice"] for m in margins],
            "o-",
            label=region.upper(),
        )
    left.axhline(result["summary"]["threshold"], color="grey", ls="--", label="threshold")
    left.set(xlabel="crop margin (px)", ylabel="worst Dice vs full grid", title="agreement with the full grid")
    left.legend()
    seconds = result["timing"]["seconds"]
    right.errorbar(
        margins,
        [seconds[f"crop{m}"]["median"] for m in margins],
        yerr=[
            [seconds[f"crop{m}"]["median"] - seconds[f"crop{m}"]["min"] for m in margins],
            [seconds[f"crop{m}"]["max"] - seconds[f"crop{m}"]["median"] for m in margins],
        ],
        fmt="o-",
        label="skip + crop",
    )
    right.axhline(seconds["skip"]["median"], color="C1", ls="--", label="skip only")
    right.axhline(seconds["full"]["median"], color="C2", ls=":", label="full grid")
    right.set(xlabel="crop margin (px)", ylabel="s per volume (OpenVINO FP32)", title="time")
    right.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.crop_margin", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--fold", nargs=2, type=Path, action="append", required=True, metavar=("BUNDLE", "DATALIST"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--margins", type=int, nargs="+", default=list(DEFAULT_MARGINS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=0.999)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    margins = sorted(set(args.margins))
    start = time.perf_counter()
    result = measure(args.data, [tuple(f) for f in args.fold], args.split, margins, args.repeats)
    result["summary"] = summarise(result, margins, args.threshold)
    result.update(
        {
            "benchmark": "crop_margin",
            "command": "python -m benchmarks.crop_margin " + " ".join(sys.argv[1:] if argv is None else argv),
            "margins": margins,
            "machine": machine_description("cpu"),
            "threads": torch.get_num_threads(),
            "wall_time_s": time.perf_counter() - start,
        }
    )
    result["markdown"] = render(result)
    write_json(args.json, result, indent=2)
    plot(result, margins, args.json.with_suffix(".png"))
    print(result["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
