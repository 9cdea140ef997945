"""How strong a baseline teacher gets on the real cases for a training budget: one ``run training`` of the
baseline bundle on a study fold's training patients, scored on its test patient(s) like the study scores.

Usage::

    python -m benchmarks.study.teacher_budget --workdir runs/study/upenn_cpu --plan benchmarks/study/plans/cpu.json \\
        --fold 2 \\
        --settings '{"roi_size": [192, 192], "slices_per_case": 8, "learning_rate": 0.0001, "cpu_bf16": true}' \\
        --epochs 10 --out benchmarks/results/study_upenn_cpu/teacher_budget.json

It reuses the study's fold datalist (patients never trained on), overlay and scoring, so its numbers are
comparable with the study's ``teacher_baseline`` row for the same fold.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

from custom_modules.files import write_json
from raagr2_tools.jobs.bundle_cli import run_bundle

from ..machine import machine_description
from .plan import load_plan
from .runner import BUNDLES, CONFIGS, Study, summarise


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.study.teacher_budget", description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True, help="a study workdir (its folds)")
    parser.add_argument("--plan", type=Path, required=True, help="the study's plan (its scoring settings)")
    parser.add_argument("--fold", type=int, required=True)
    parser.add_argument("--settings", default="{}", help="bundle keys (JSON) on top of the study's overlay")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    record = json.loads((workdir / "study.json").read_text())
    plan = load_plan(args.plan)
    folds = json.loads((workdir / "data" / "folds.json").read_text())
    fold = folds[args.fold]
    settings = json.loads(args.settings)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    run_dir = workdir / "teacher_budget" / f"f{args.fold}_{args.epochs}ep_{digest}"
    overlay = {**json.loads((CONFIGS / "training.json").read_text()), **settings}
    overlay_path = write_json(run_dir / "overlay.json", overlay, indent=2)
    start = time.perf_counter()
    if not (run_dir / "models" / "model.pt").is_file():
        run_bundle(
            [BUNDLES["baseline"] / "configs" / "train.json", overlay_path],
            "training",
            {
                "bundle_root": run_dir,
                "dataset_dir": "/",
                "data_list_file_path": fold["datalist"],
                "epochs": args.epochs,
            },
        )
    train_s = time.perf_counter() - start
    study = Study(plan, Path(record["data"]), workdir)
    net = study.load({"variant": "baseline", "ckpt": str(run_dir / "models" / "model.pt")})
    rows = study.evaluate(net, study.cases(fold), args.fold, 0)["none"]
    result = {
        "fold": fold,
        "epochs": args.epochs,
        "settings": overlay,
        "train_seconds": round(train_s, 1),
        "per_case": rows,
        "summary": summarise(rows),
        "scored": "as the study: delivered label map, BraTS 2023 HD95, per patient never trained on",
        "machine": machine_description(),
    }
    write_json(args.out, result, indent=2)
    for row in rows:
        print(f"{row['case']}: WT {row['wt_dice']:.3f} TC {row['tc_dice']:.3f} ET {row['et_dice']:.3f}", flush=True)
    return result


if __name__ == "__main__":
    main()
