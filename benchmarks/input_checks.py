"""What the reliability checks cost at inference: per-case input checks and model-file verification, against
the inference they guard, measured in one process on real cases.

    python -m benchmarks.input_checks --data ../shared/data/upenn_gbm [--cases 2] [--repeats 3] \
        [--json benchmarks/results/input_checks.json]

Per case and repeat (interleaved, so drift hits both alike): loading with ``LoadImaged`` vs
:class:`custom_modules.transforms.LoadCased` (the bundle's preprocessing otherwise the same), the checks alone
(:func:`check_image` on the loaded case), and whole-volume inference of the baseline RAAGR2-Net with the bundle's
``BrainSliceInferer`` in its fastest option (skip empty slices, crop to brain: the smallest denominator). Once
per run: :func:`verify_artefact` of ``model.pt`` (its SHA-256). The overhead
is (checks + verification / cases) / (load + inference), stored as a fraction; the issue's limit is 0.02.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from monai.transforms import Compose, EnsureTyped, LoadImaged, NormalizeIntensityd

from custom_modules.artefacts import verify_artefact
from custom_modules.files import write_json
from custom_modules.handlers import save_atomic
from custom_modules.inference import BrainSliceInferer
from custom_modules.networks import RAAGR2Net
from custom_modules.transforms import LoadCased
from custom_modules.transforms.load_case import check_image
from data_prep.prepare import prepare_datalist
from raagr2_tools.reports.tables import markdown_table

from .machine import machine_description

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "input_checks.json"


def _preprocessing(loader: Any) -> Compose:
    normalise = NormalizeIntensityd("image", nonzero=True, channel_wise=True)
    return Compose([loader, EnsureTyped("image", dtype=torch.float32), normalise])


def _timed(fn) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure(data: Path, cases: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        datalist = prepare_datalist(data, Path(tmp) / "datalist.json", all_test=True)
        entries = [
            {"case_id": e["case_id"], "image": [str(data / p) for p in e["image"]]} for e in datalist["test"][:cases]
        ]
        net = RAAGR2Net().eval()
        weights = Path(tmp) / "models" / "model.pt"
        save_atomic(net.state_dict(), weights)
        verify_s = statistics.median(_timed(lambda: verify_artefact(weights))[0] for _ in range(repeats))
    # the fastest shipped inference option (skip empty slices, crop to brain): the smallest denominator
    inferer = BrainSliceInferer(
        roi_size=(240, 240), sw_batch_size=8, overlap=0.25, skip_empty_slices=True, crop_to_brain=True
    )
    plain, checked = _preprocessing(LoadImaged("image", ensure_channel_first=True)), _preprocessing(LoadCased("image"))
    rows = []
    for entry in entries:
        times: dict[str, list[float]] = {"load_s": [], "load_checked_s": [], "checks_s": [], "inference_s": []}
        for repeat in range(repeats):
            t, loaded = _timed(lambda: plain(dict(entry)))
            times["load_s"].append(t)
            times["load_checked_s"].append(_timed(lambda: checked(dict(entry)))[0])
            raw = LoadImaged("image", ensure_channel_first=True)(dict(entry))["image"]
            times["checks_s"].append(_timed(lambda: check_image(entry["case_id"], raw, entry["image"], 4))[0])
            with torch.inference_mode():
                times["inference_s"].append(_timed(lambda: inferer(loaded["image"][None], net))[0])
            print(
                f"{entry['case_id']} repeat {repeat + 1}/{repeats}: "
                + ", ".join(f"{k} {v[-1]:.3f}" for k, v in times.items()),
                file=sys.stderr,
                flush=True,
            )
        row = {"case_id": entry["case_id"], "shape": list(raw.shape)}
        for key, values in times.items():
            row[key] = {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}
        per_case = row["checks_s"]["median"] + verify_s / len(entries)
        row["overhead"] = per_case / (row["load_s"]["median"] + row["inference_s"]["median"])  # a fraction
        rows.append(row)
    return {
        "machine": machine_description("cpu"),
        "torch_threads": torch.get_num_threads(),
        "repeats": repeats,
        "verify_model_pt_s": verify_s,
        "network": "RAAGR2Net default features (baseline), random weights",
        "inference": "BrainSliceInferer roi 240, sw_batch 8, skip_empty_slices and crop_to_brain (the fastest option)",
        "cases": rows,
        "overhead_max": max(r["overhead"] for r in rows),
        "limit": 0.02,
    }


def table(result: dict[str, Any]) -> str:
    header = ["case", "load s", "load+checks s", "checks s", "inference s", "overhead %"]
    rows = [
        [
            r["case_id"],
            f"{r['load_s']['median']:.3f}",
            f"{r['load_checked_s']['median']:.3f}",
            f"{r['checks_s']['median']:.4f}",
            f"{r['inference_s']['median']:.2f}",
            f"{100 * r['overhead']:.2f}",
        ]
        for r in result["cases"]
    ]
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a folder of real cases (any data_prep layout)")
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    result = measure(args.data.resolve(), args.cases, args.repeats)
    print(table(result))
    print(
        f"verify model.pt once per run: {result['verify_model_pt_s'] * 1000:.1f} ms; "
        f"largest overhead {result['overhead_pct_max']:.2f} % (limit {result['limit_pct']} %)"
    )
    write_json(args.json, result, indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
