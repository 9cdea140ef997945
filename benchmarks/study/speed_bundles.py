"""Deployable bundles of a study's trained models, with this checkout's configs, for the speed benchmarks.

    python -m benchmarks.study.speed_bundles --workdir runs/study/upenn_speed_models --out runs/speed_bundles

For each fold ``k`` of the study's seed 0 it writes ``<out>/f<k>/baseline`` (``bundles/raagr2_baseline`` with the
fold's ``teacher_baseline`` weights) and ``<out>/f<k>/pruned`` (the fold's fine-tuned pruned bundle, its
``network_def`` kept, every other inference and export key from this checkout's baseline configs), each with
``models/model.pt`` recorded in ``models/manifest.json``, and ``<out>/f<k>/datalist.json`` (the fold's patient
split). The folds whose models are not complete yet are left out. Prints ``variant bundle datalist`` per line,
ready for ``benchmarks.export_checks --fold``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from custom_modules.artefacts import record_artefacts, sha256_file
from custom_modules.files import write_json

REPO = Path(__file__).resolve().parents[2]
BASELINE = REPO / "bundles" / "raagr2_baseline"
PRUNED_ENTRY = "baseline_taylor_50_iterative"
SYNCED = ("inference.json", "export.json")


def _copy_weights(src: Path, bundle: Path) -> None:
    (bundle / "models").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, bundle / "models" / "model.pt")
    record_artefacts(bundle / "models", {"model.pt": None})


def write_fold(unit: Path, datalist: Path, out: Path) -> list[tuple[str, Path]]:
    """The bundles of one fold (``unit``: ``units/s0/f<k>``); [] when its models are missing."""
    teacher = unit / "teacher_baseline" / "models" / "model.pt"
    pruned = next(iter(sorted((unit / PRUNED_ENTRY).glob("raagr2_pruned_*"))), None)
    if not teacher.is_file() or pruned is None or not (pruned / "models" / "model.pt").is_file():
        return []
    written = [("baseline", out / "baseline"), ("pruned", out / "pruned")]
    sources = {"baseline": teacher, "pruned": pruned / "models" / "model.pt"}
    if all((b / "models" / "model.pt").is_file() for _, b in written) and all(
        sha256_file(b / "models" / "model.pt") == sha256_file(sources[v]) for v, b in written
    ):
        return written  # already written from these weights: kept with its exports
    if out.exists():
        shutil.rmtree(out)  # this script's own earlier output, from other weights
    out.mkdir(parents=True)
    shutil.copyfile(datalist, out / "datalist.json")
    baseline = out / "baseline"
    shutil.copytree(BASELINE, baseline, ignore=shutil.ignore_patterns("models", "eval", "dist"))
    _copy_weights(teacher, baseline)
    small = out / "pruned"
    shutil.copytree(pruned, small, ignore=shutil.ignore_patterns("models", "eval", "dist"))
    for name in SYNCED:
        current = json.loads((BASELINE / "configs" / name).read_text())
        own = json.loads((small / "configs" / name).read_text())
        if "network_def" in own:
            current["network_def"] = own["network_def"]
        write_json(small / "configs" / name, current)
    _copy_weights(pruned / "models" / "model.pt", small)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.study.speed_bundles", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    for fold_unit in sorted((args.workdir / "units" / "s0").glob("f*")):
        datalist = args.workdir / "data" / f"fold{fold_unit.name[1:]}.json"
        for variant, bundle in write_fold(fold_unit, datalist, args.out / fold_unit.name):
            print(variant, bundle.resolve(), (bundle.parent / "datalist.json").resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
