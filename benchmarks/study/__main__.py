"""``python -m benchmarks.study --data DIR --plan PLAN.json``: run a compression study (see :mod:`.runner`)."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from custom_modules.files import write_json

from ..machine import REPO_ROOT
from .plan import load_plan
from .report import write_study_report
from .runner import Study


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.study", description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="BraTS-style folder of the scored cases")
    parser.add_argument("--plan", type=Path, required=True, help="plan JSON, e.g. benchmarks/study/plans/cpu.json")
    parser.add_argument(
        "--extra-training", type=Path, nargs="*", default=[], help="folders of cases added to training, never scored"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="default: runs/study/<plan name>")
    parser.add_argument("--results", type=Path, default=None, help="copy results.json and the report here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    plan = load_plan(args.plan)
    workdir = (args.workdir or REPO_ROOT / "runs" / "study" / plan.name).resolve()
    study = Study(plan, args.data, workdir, args.extra_training)
    results = study.run()
    report_dir = workdir / "report"
    results["sources"] = {"results_json": "results.json"}
    write_json(report_dir / "results.json", results, indent=2)
    report = write_study_report(results, report_dir)
    print(f"report: {report}", flush=True)
    if args.results:
        args.results.mkdir(parents=True, exist_ok=True)
        for path in report_dir.iterdir():
            if path.is_file() and not path.name.startswith("."):
                shutil.copyfile(path, args.results / path.name)
        print(f"copied to {args.results}", flush=True)
    return results


if __name__ == "__main__":
    try:
        main()
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        print(f"study failed: {e}", file=sys.stderr)
        sys.exit(1)
