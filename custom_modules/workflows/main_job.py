"""The main job: phantom (or real BraTS) data -> train -> per-patient evaluation -> segmentation -> report.

Usage::

    python -m custom_modules.workflows.main_job                       # built-in phantom data
    python -m custom_modules.workflows.main_job --data /path/to/BraTS  # any layout data_prep understands
    python -m custom_modules.workflows.main_job --bundle bundles/raagr2_shared_depthwise

It drives a bundle (default ``bundles/raagr2_baseline``) through ``python -m monai.bundle run`` exactly as a
user would, then
prints a table (per-region Dice and HD95, parameters, FLOPs, timings) and writes ``report.md``,
``report.json`` and ``region_dice.png`` into the work folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from custom_modules.bundle_tools import bundle_network
from custom_modules.networks.complexity import FLOP_COUNTER, count_flops, count_parameters, slice_latency_ms
from custom_modules.report import plot_region_dice, region_summary, render_markdown
from custom_modules.workflows.bundle_cli import run_bundle
from data_prep.prepare import prepare_datalist
from data_prep.synthetic import write_phantom_dataset

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = REPO_ROOT / "bundles" / "raagr2_baseline"

#: settings for the built-in phantoms: small volumes so that the whole job fits in minutes on 2 CPU cores
PHANTOM_SETTINGS = {"size": (64, 64, 32), "cases": 20, "epochs": 15, "learning_rate": 1e-3}
#: settings for real BraTS-size data
REAL_SETTINGS = {"roi_size": [192, 192], "infer_roi_size": [240, 240], "epochs": 35, "learning_rate": 1e-4}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="bundle folder (default: baseline)")
    parser.add_argument("--data", type=Path, default=None, help="BraTS-style folder; default: make phantoms")
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "runs" / "main_job", help="output folder")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 15 phantom, 35 real)")
    parser.add_argument("--cases", type=int, default=PHANTOM_SETTINGS["cases"], help="number of phantoms")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def prepare_data(args: argparse.Namespace, workdir: Path) -> tuple[Path, Path, dict[str, Any]]:
    """Phantoms or the user's folder -> a patient-level datalist; returns (dataset_dir, datalist, overrides)."""
    if args.data is None:
        size = PHANTOM_SETTINGS["size"]
        dataset_dir = workdir / "data"
        print(f"[1/5] writing {args.cases} phantom cases of {size} voxels to {dataset_dir}", flush=True)
        write_phantom_dataset(dataset_dir, args.cases, args.seed, shape=size)
        overrides = {
            "roi_size": list(size[:2]),
            "infer_roi_size": list(size[:2]),
            "epochs": args.epochs or PHANTOM_SETTINGS["epochs"],
            "learning_rate": PHANTOM_SETTINGS["learning_rate"],
            "slices_per_case": 8,
            "cases_per_batch": 2,
            "cache_rate": 1.0,
        }
    else:
        dataset_dir = args.data.resolve()
        print(f"[1/5] using BraTS-style data in {dataset_dir}", flush=True)
        overrides = {**REAL_SETTINGS, "epochs": args.epochs or REAL_SETTINGS["epochs"]}
    datalist = workdir / "datalist.json"
    prepare_datalist(dataset_dir, datalist, seed=args.seed)
    return dataset_dir, datalist, overrides


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle.resolve()
    configs = bundle / "configs"
    dataset_dir, datalist, overrides = prepare_data(args, workdir)
    paths = {"bundle_root": workdir, "dataset_dir": dataset_dir, "data_list_file_path": datalist, "num_workers": 0}
    train = {**paths, "seed": args.seed, **overrides}

    print(f"[2/5] training {bundle.name} for {overrides['epochs']} epochs", flush=True)
    train_s = run_bundle([configs / "train.json"], "training", train)

    print("[3/5] evaluating per patient on the held-out test cases (whole volumes, SliceInferer)", flush=True)
    eval_s = run_bundle([configs / "train.json", configs / "evaluate.json"], "run", train)

    print("[4/5] segmenting the test cases to BraTS label maps", flush=True)
    predictions = workdir / "predictions"
    infer = {**paths, "infer_roi_size": overrides["infer_roi_size"], "output_dir": predictions}
    infer_s = run_bundle([configs / "inference.json"], "inference", infer)

    print("[5/5] measuring size and cost of the network", flush=True)
    metrics = json.loads((workdir / "eval" / "per_case_metrics.json").read_text())
    report = build_report(bundle, metrics["cases"], train_s, eval_s, infer_s, overrides, predictions)
    write_report(report, metrics["cases"], workdir)
    return report


def build_report(
    bundle: Path,
    cases: list[dict[str, Any]],
    train_s: float,
    eval_s: float,
    infer_s: float,
    overrides: dict[str, Any],
    predictions: Path,
) -> dict[str, Any]:
    """Everything the table shows, as plain numbers."""
    bundle_net = bundle_network(bundle)
    spec_net = bundle_network(bundle, {"network_def#out_channels": 5, "network_def#sigmoid": True})
    slice_shape = (1, 4, 192, 192)
    return {
        "bundle": bundle.name,
        "test_cases": len(cases),
        "regions": region_summary(cases),
        "parameters_bundle_3ch": count_parameters(bundle_net),
        "parameters_spec_5ch": count_parameters(spec_net),
        "flops_per_192_slice": count_flops(bundle_net, slice_shape),
        "flop_counter": FLOP_COUNTER,
        "latency_ms_per_192_slice": slice_latency_ms(bundle_net, slice_shape),
        "torch_threads": torch.get_num_threads(),
        "train_seconds": train_s,
        "evaluate_seconds": eval_s,
        "inference_seconds": infer_s,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in overrides.items()},
        "label_maps": sorted(str(p) for p in predictions.glob("*.nii.gz")),
    }


def write_report(report: dict[str, Any], cases: list[dict[str, Any]], workdir: Path) -> None:
    """Print the table; write report.md, report.json and region_dice.png into ``workdir``."""
    regions = report["regions"]
    rows = [
        (f"{r.upper()} Dice (mean ± sd, {report['test_cases']} test cases)",
         f"{regions[f'{r}_dice']['mean']:.3f} ± {regions[f'{r}_dice']['std']:.3f}")
        for r in ("wt", "tc", "et")
    ]
    rows += [(f"{r.upper()} HD95 mm (mean)", f"{regions[f'{r}_hd95']['mean']:.2f}") for r in ("wt", "tc", "et")]
    rows += [
        ("reference soft Dice (not BraTS Dice)", f"{regions['ref_soft_dice']['mean']:.3f}"),
        ("reference mIoU", f"{regions['ref_miou']['mean']:.3f}"),
        ("parameters (3 region outputs)", f"{report['parameters_bundle_3ch']:,}"),
        ("parameters (spec, 5 outputs)", f"{report['parameters_spec_5ch']:,}"),
        ("GFLOPs per 4x192x192 slice", f"{report['flops_per_192_slice'] / 1e9:.2f} ({report['flop_counter']})"),
        (f"latency per 192x192 slice, {report['torch_threads']} threads", f"{report['latency_ms_per_192_slice']:.0f} ms"),
        ("training time", f"{report['train_seconds']:.0f} s"),
        ("evaluation time", f"{report['evaluate_seconds']:.0f} s"),
        ("segmentation time", f"{report['inference_seconds']:.0f} s"),
        ("label maps written", str(len(report["label_maps"]))),
    ]
    table = render_markdown(rows, f"{report['bundle']}: main job")
    png = plot_region_dice(cases, workdir / "region_dice.png", f"{report['bundle']}, per test case")
    (workdir / "report.md").write_text(table + f"\n![per-case Dice]({png.name})\n")
    (workdir / "report.json").write_text(json.dumps(report, indent=2))
    print("\n" + table)
    print(f"report: {workdir / 'report.md'}  figure: {png}  per-case metrics: {workdir / 'eval'}")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (OSError, RuntimeError, ValueError) as e:
        print(f"main job failed: {e}", file=sys.stderr)
        sys.exit(1)
