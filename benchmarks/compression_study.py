"""Compression study on phantom (or real) data: train a teacher, compress it, compare on the same patients.

Usage::

    python -m benchmarks.compression_study                        # phantoms, depgraph 30 %, KD
    python -m benchmarks.compression_study --method taylor --schedule iterative --ratio 0.5
    python -m benchmarks.compression_study --teacher bundles/raagr2_baseline/models/model.pt

It runs the bundles through ``python -m monai.bundle`` exactly as a user would: ``training`` of the baseline
bundle (unless ``--teacher`` is given), then ``compress`` of ``bundles/raagr2_pruned`` with the same data
and split, and copies the compression report (Markdown, JSON, PNG) to ``--results``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from custom_modules.files import write_text_atomic
from raagr2_tools.compression import pruned_bundle_name
from raagr2_tools.jobs.bundle_cli import run_bundle
from raagr2_tools.jobs.main_job import PHANTOM_SETTINGS, REAL_SETTINGS, load_settings, prepare_data

from .machine import REPO_ROOT

BASELINE = REPO_ROOT / "bundles" / "raagr2_baseline"
PRUNED = REPO_ROOT / "bundles" / "raagr2_pruned"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="BraTS-style folder; default: make phantoms")
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "runs" / "compression_study")
    parser.add_argument("--teacher", type=Path, default=None, help="teacher state_dict; default: train one")
    parser.add_argument("--variant", default="baseline", choices=["baseline", "shared_depthwise"])
    parser.add_argument("--method", default="depgraph")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--schedule", default="oneshot")
    parser.add_argument("--epochs", type=int, default=None, help="teacher epochs (default 15 on phantoms)")
    parser.add_argument("--finetune-epochs", type=int, default=10, help="fine-tuning epochs after each step")
    parser.add_argument("--no-distillation", action="store_true")
    parser.add_argument("--cases", type=int, default=None, help="number of phantoms (default: the overlay's, 20)")
    parser.add_argument("--settings", type=Path, default=None, help="settings overlay (default: the main job's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=None, help="copy the report here (e.g. benchmarks/results)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    overlay = (args.settings or (PHANTOM_SETTINGS if args.data is None else REAL_SETTINGS)).resolve()
    settings = load_settings(overlay)
    dataset_dir, datalist = prepare_data(args, workdir, settings)
    common = {
        "dataset_dir": dataset_dir,
        "data_list_file_path": datalist,
        "seed": args.seed,
        **({"epochs": args.epochs} if args.epochs else {}),
    }
    teacher_bundle = BASELINE if args.variant == "baseline" else REPO_ROOT / "bundles" / "raagr2_shared_depthwise"

    teacher = args.teacher.resolve() if args.teacher else workdir / "teacher" / "models" / "model.pt"
    if args.teacher is None:
        print(f"[2/4] training the {args.variant} teacher for {args.epochs or settings['epochs']} epochs", flush=True)
        run_bundle(
            [teacher_bundle / "configs" / "train.json", overlay],
            "training",
            {**common, "bundle_root": workdir / "teacher"},
        )

    print(f"[3/4] compressing: {args.method}, ratio {args.ratio}, {args.schedule}", flush=True)
    output_dir = workdir / "compressed"
    compress = {
        **common,
        "bundle_root": PRUNED,
        "output_dir": output_dir,
        "teacher_ckpt": teacher,
        "variant": args.variant,
        "method": args.method,
        "ratio": args.ratio,
        "schedule": args.schedule,
        "epochs": args.finetune_epochs,
        "distillation": not args.no_distillation,
        "overwrite": True,  # this work folder's own result, replaced by a re-run
    }
    run_bundle([PRUNED / "configs" / "train.json", overlay, PRUNED / "configs" / "compress.json"], "compress", compress)

    name = pruned_bundle_name(args.method, args.ratio, args.variant)
    docs = output_dir / name / "docs"
    report = json.loads((docs / "compression_report.json").read_text())
    print("[4/4] per-region Dice (same test patients)", flush=True)
    for stage, dice in report["dice"].items():
        print(f"  {stage:<24}" + "  ".join(f"{r.upper()} {v:.4f}" for r, v in dice.items()), flush=True)
    if args.results:
        stem = f"compression_{'phantoms' if args.data is None else 'data'}_{name}"
        args.results.mkdir(parents=True, exist_ok=True)
        for suffix in (".json", ".md", ".png"):
            shutil.copyfile(docs / f"compression_report{suffix}", args.results / f"{stem}{suffix}")
        md = args.results / f"{stem}.md"
        write_text_atomic(md, md.read_text().replace("compression_report.png", f"{stem}.png"))
        print(f"report copied to {args.results}/{stem}.*", flush=True)
    return report


if __name__ == "__main__":
    try:
        main()
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
