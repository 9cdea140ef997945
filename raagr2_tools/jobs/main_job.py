"""The main job: phantom (or real BraTS) data -> train -> per-patient evaluation -> segmentation -> report.

Usage::

    python -m raagr2_tools.jobs.main_job                       # built-in phantom data
    python -m raagr2_tools.jobs.main_job --data /path/to/BraTS  # any layout data_prep understands
    python -m raagr2_tools.jobs.main_job --bundle bundles/raagr2_shared_depthwise

It drives a bundle (default ``bundles/raagr2_baseline``) through ``python -m monai.bundle run`` exactly as a
user would, with one JSON overlay of settings passed as the last config file: ``configs/phantom.json`` for
the built-in phantoms (its ``phantom_data`` key sets the phantoms made), ``configs/real.json`` for real data
(``--settings`` takes another). Then it prints a table (per-region Dice and HD95, parameters, FLOPs, timings),
a per-case table (Dice and HD95 of WT, TC, ET for every test case) and the spread over the cases (mean ± sd,
median, min–max per region), and writes them to ``report.md``, with ``report.json`` and ``region_dice.png``,
into the work folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from custom_modules.constants import REGION_DISPLAY_ORDER
from custom_modules.files import TEMP_PREFIX, write_json, write_text_atomic
from custom_modules.handlers.run_guard import RUN_RECORD
from custom_modules.metrics.summary import region_summary
from custom_modules.networks.complexity import FLOP_COUNTER, count_flops, count_parameters, slice_latency_ms
from data_prep.prepare import prepare_datalist
from data_prep.synthetic import write_phantom_dataset
from raagr2_tools.authoring import bundle_network
from raagr2_tools.jobs.bundle_cli import run_bundle
from raagr2_tools.reports import format_value, markdown_table, plot_region_dice, quantity_table

#: the settings overlays this job passes to ``python -m monai.bundle`` after the bundle's own configs
SETTINGS_DIR = Path(__file__).resolve().parent / "configs"
PHANTOM_SETTINGS = SETTINGS_DIR / "phantom.json"
REAL_SETTINGS = SETTINGS_DIR / "real.json"
#: key of the phantom overlay that sets the phantoms made (not a bundle key; the bundles ignore it)
PHANTOM_DATA_KEY = "phantom_data"


#: this checkout: the default bundle and output folder lie inside it, as before
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = REPO_ROOT / "bundles" / "raagr2_baseline"


def load_settings(path: Path) -> dict[str, Any]:
    """A settings overlay (a JSON object of bundle keys).

    Raises:
        ValueError: naming the file when it is missing or not a JSON object.
    """
    try:
        settings = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} not found: --settings takes a JSON file of bundle keys") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{path} must hold a JSON object of bundle keys")
    return settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="bundle folder (default: baseline)")
    parser.add_argument("--data", type=Path, default=None, help="BraTS-style folder; default: make phantoms")
    parser.add_argument(
        "--workdir", type=Path, default=REPO_ROOT / "runs" / "main_job", help="output folder (default: runs/main_job)"
    )
    parser.add_argument(
        "--settings",
        type=Path,
        default=None,
        help=f"settings overlay (default: {PHANTOM_SETTINGS.name} for phantoms, {REAL_SETTINGS.name} for --data)",
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="training epochs (default: the overlay's, 15 phantom, 35 real)"
    )
    parser.add_argument("--cases", type=int, default=None, help="number of phantoms (default: the overlay's, 20)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def prepare_data(args: argparse.Namespace, workdir: Path, settings: dict[str, Any]) -> tuple[Path, Path]:
    """Phantoms (as the overlay's ``phantom_data`` says, else ``configs/phantom.json``'s) or the user's folder ->
    a patient-level datalist; returns (dataset_dir, datalist)."""
    if args.data is None:
        phantoms = settings.get(PHANTOM_DATA_KEY) or load_settings(PHANTOM_SETTINGS)[PHANTOM_DATA_KEY]
        shape = tuple(int(s) for s in phantoms["shape"])
        cases = args.cases or int(phantoms["cases"])
        dataset_dir = workdir / "data"
        print(f"[1/5] writing {cases} phantom cases of {shape} voxels to {dataset_dir}", flush=True)
        write_phantom_dataset(dataset_dir, cases, args.seed, shape=shape)
    else:
        dataset_dir = args.data.resolve()
        print(f"[1/5] using BraTS-style data in {dataset_dir}", flush=True)
    datalist = workdir / "datalist.json"
    candidate = workdir / f"{TEMP_PREFIX}datalist.json"
    prepare_datalist(dataset_dir, candidate, seed=args.seed)
    if datalist.is_file() and (workdir / "models" / RUN_RECORD).is_file():
        if json.loads(datalist.read_text()) != json.loads(candidate.read_text()):
            candidate.unlink()
            raise ValueError(
                f"{workdir}: holds a run on another dataset or split ({datalist}); use another --workdir, or delete "
                f"{workdir} to start fresh"
            )
    os.replace(candidate, datalist)
    return dataset_dir, datalist


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle.resolve()
    configs = bundle / "configs"
    overlay = (args.settings or (PHANTOM_SETTINGS if args.data is None else REAL_SETTINGS)).resolve()
    settings = load_settings(overlay)
    dataset_dir, datalist = prepare_data(args, workdir, settings)
    paths = {"bundle_root": workdir, "dataset_dir": dataset_dir, "data_list_file_path": datalist}
    train = {**paths, "seed": args.seed, **({"epochs": args.epochs} if args.epochs else {})}
    epochs = args.epochs or settings.get("epochs")

    print(f"[2/5] training {bundle.name} for {epochs} epochs ({overlay.name})", flush=True)
    train_s = run_bundle([configs / "train.json", overlay], "training", train)

    print("[3/5] evaluating per patient on the held-out test cases (whole volumes, SliceInferer)", flush=True)
    eval_s = run_bundle([configs / "train.json", configs / "evaluate.json", overlay], "run", train)

    print("[4/5] segmenting the test cases to BraTS label maps", flush=True)
    predictions = workdir / "predictions"
    # the run guard of training made sure this work folder holds this run: its earlier predictions are replaced
    infer = {**paths, "output_dir": predictions, "overwrite": True}
    infer_s = run_bundle([configs / "inference.json", overlay], "inference", infer)

    print("[5/5] measuring size and cost of the network", flush=True)
    metrics = json.loads((workdir / "eval" / "per_case_metrics.json").read_text())
    used = {"settings_file": str(overlay), **{k: v for k, v in settings.items() if k != PHANTOM_DATA_KEY}, **train}
    report = build_report(bundle, metrics["cases"], train_s, eval_s, infer_s, used, predictions)
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
        "region_spread": region_spread(cases),
        "per_case": [dict(case) for case in cases],
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


#: per-region metrics of the per-case and spread tables: (column suffix, heading, number format)
CASE_METRICS: tuple[tuple[str, str, str], ...] = (("dice", "Dice", ".3f"), ("hd95", "HD95 mm", ".2f"))


def region_spread(cases: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """``{"<region>_<metric>": {"mean", "std", "median", "min", "max"}}`` over the finite values of ``cases``
    (mean and sd from :func:`region_summary`; NaN when a column has no finite value)."""
    summary = region_summary(cases)
    spread = {}
    for region in REGION_DISPLAY_ORDER:
        for metric, _, _ in CASE_METRICS:
            column = f"{region}_{metric}"
            values = [float(case[column]) for case in cases if math.isfinite(float(case[column]))]
            stats = dict(summary.get(column, {"mean": math.nan, "std": math.nan}))
            if values:
                stats.update(median=statistics.median(values), min=min(values), max=max(values))
            else:
                stats.update(median=math.nan, min=math.nan, max=math.nan)
            spread[column] = stats
    return spread


def per_case_table(cases: Sequence[Mapping[str, Any]]) -> str:
    """One row per test case: case id, then Dice and HD95 of each region in :data:`REGION_DISPLAY_ORDER`."""
    header = ["case"] + [f"{r.upper()} {heading}" for _, heading, _ in CASE_METRICS for r in REGION_DISPLAY_ORDER]
    rows = [
        [case["case"]]
        + [format_value(case[f"{r}_{metric}"], spec) for metric, _, spec in CASE_METRICS for r in REGION_DISPLAY_ORDER]
        for case in cases
    ]
    return f"## per test case ({len(cases)})\n\n" + markdown_table(header, rows)


def spread_table(spread: Mapping[str, Mapping[str, float]], count: int) -> str:
    """Per region and metric: mean ± sd, median and min–max over the ``count`` test cases."""
    rows = []
    for metric, heading, spec in CASE_METRICS:
        for r in REGION_DISPLAY_ORDER:
            s = spread[f"{r}_{metric}"]
            rows.append(
                (
                    f"{r.upper()} {heading}",
                    f"{format_value(s['mean'], spec)} ± {format_value(s['std'], spec)}",
                    format_value(s["median"], spec),
                    f"{format_value(s['min'], spec)}–{format_value(s['max'], spec)}",
                )
            )
    return f"## spread over the {count} test cases\n\n" + markdown_table(
        ("metric", "mean ± sd", "median", "min–max"), rows
    )


def write_report(report: dict[str, Any], cases: list[dict[str, Any]], workdir: Path) -> None:
    """Print the tables (summary, per test case, spread); write report.md, report.json and region_dice.png
    into ``workdir``."""
    regions = report["regions"]
    rows = [
        (
            f"{r.upper()} Dice (mean ± sd, {report['test_cases']} test cases)",
            f"{regions[f'{r}_dice']['mean']:.3f} ± {regions[f'{r}_dice']['std']:.3f}",
        )
        for r in REGION_DISPLAY_ORDER
    ]
    rows += [(f"{r.upper()} HD95 mm (mean)", f"{regions[f'{r}_hd95']['mean']:.2f}") for r in REGION_DISPLAY_ORDER]
    rows += [
        ("reference soft Dice (not BraTS Dice)", f"{regions['ref_soft_dice']['mean']:.3f}"),
        ("reference mIoU", f"{regions['ref_miou']['mean']:.3f}"),
        ("parameters (3 region outputs)", f"{report['parameters_bundle_3ch']:,}"),
        ("parameters (spec, 5 outputs)", f"{report['parameters_spec_5ch']:,}"),
        ("GFLOPs per 4x192x192 slice", f"{report['flops_per_192_slice'] / 1e9:.2f} ({report['flop_counter']})"),
        (
            f"latency per 192x192 slice, {report['torch_threads']} threads",
            f"{report['latency_ms_per_192_slice']:.0f} ms",
        ),
        ("training time", f"{report['train_seconds']:.0f} s"),
        ("evaluation time", f"{report['evaluate_seconds']:.0f} s"),
        ("segmentation time", f"{report['inference_seconds']:.0f} s"),
        ("label maps written", str(len(report["label_maps"]))),
    ]
    table = quantity_table(rows, f"{report['bundle']}: main job")
    table += "\n" + per_case_table(cases) + "\n" + spread_table(report["region_spread"], len(cases))
    png = plot_region_dice(cases, workdir / "region_dice.png", f"{report['bundle']}, per test case")
    write_text_atomic(workdir / "report.md", table + f"\n![per-case Dice]({png.name})\n")
    write_json(workdir / "report.json", report, indent=2)
    print("\n" + table)
    print(f"report: {workdir / 'report.md'}  figure: {png}  per-case metrics: {workdir / 'eval'}")


def cli(argv: list[str] | None = None) -> int:
    """``raagr2-main-job`` / ``python -m raagr2_tools.jobs.main_job``: the exit code (1 with the reason on error)."""
    try:
        main(sys.argv[1:] if argv is None else argv)
    except (OSError, RuntimeError, ValueError) as e:
        print(f"main job failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
