"""Train only what the speed benchmarks need from a study plan: per fold the teacher and the plan's compressed
models, as the study's own units (same folders and results, so a later full study run reuses them).

    python -m benchmarks.study.speed_models --data ../shared/data/upenn_gbm \
        --extra-training ../shared/data/tcga_lgg_brainles --plan benchmarks/study/plans/speed_models.json \
        --workdir runs/study/upenn_speed_models [--folds 0 1 2]

The full study (``python -m benchmarks.study``) also trains the shared-depthwise teacher and the same-budget
controls; the speed benchmarks (``benchmarks.study.speed_bundles``, ``benchmarks.export_checks``,
``benchmarks.crop_margin``, ``benchmarks.end_to_end``) use the baseline teacher and its fine-tuned pruned model
of every fold. Units already done are skipped; a killed run resumes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .plan import load_plan
from .runner import Study


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.study.speed_models", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--extra-training", type=Path, nargs="*", default=[])
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--folds", type=int, nargs="*", default=None, help="default: every fold of the plan")
    args = parser.parse_args(argv)
    plan = load_plan(args.plan)
    study = Study(plan, args.data, args.workdir, args.extra_training)
    study.check_workdir()
    study.use_bf16()
    for seed in plan.seeds[:1]:
        for fold in study.folds():
            if args.folds is not None and fold["fold"] not in args.folds:
                continue
            tag = f"s{seed}/f{fold['fold']}"
            teacher = study.unit(
                f"{tag}/teacher_baseline",
                lambda d, fold=fold, seed=seed: study.train(d, fold, seed, "baseline", plan.teacher_epochs, {}),
            )
            for spec in plan.compressed:
                study.unit(
                    f"{tag}/{spec.model_id}",
                    lambda d, fold=fold, seed=seed, spec=spec: study.compress(d, fold, seed, spec, teacher),
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
