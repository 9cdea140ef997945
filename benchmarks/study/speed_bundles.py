"""Deployable bundles of a study's trained models, with this checkout's configs, for the speed benchmarks.

    python -m benchmarks.study.speed_bundles --workdir runs/study/upenn_speed_models --out runs/speed_bundles

For each fold ``k`` of the study's seed 0 it writes ``<out>/f<k>/baseline`` (``bundles/raagr2_baseline`` with the
fold's ``teacher_baseline`` weights), ``<out>/f<k>/pruned`` (the fold's fine-tuned pruned bundle of the plan's
reference entry, its ``network_def`` kept, every other inference and export key from this checkout's baseline
configs) and ``<out>/f<k>/pruned_<entry>`` for every other compressed entry (e.g. ``pruned_taylor_75_iterative``),
each with ``models/model.pt`` recorded in ``models/manifest.json``, and ``<out>/f<k>/datalist.json`` (the fold's
patient split). The folds whose models are not complete yet are left out. Prints ``variant bundle datalist`` per line,
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


def _variant_name(entry: str) -> str:
    """``pruned`` for the plan's reference entry, ``pruned_<rest>`` (e.g. ``pruned_taylor_75_iterative``) else."""
    return "pruned" if entry == PRUNED_ENTRY else "pruned_" + entry.removeprefix("baseline_")


def _sources(unit: Path) -> dict[str, tuple[Path, Path | None]]:
    """Per variant: (its weights, the compressed bundle whose configs it keeps, or None for the teacher); only the
    models that are complete."""
    sources: dict[str, tuple[Path, Path | None]] = {}
    teacher = unit / "teacher_baseline" / "models" / "model.pt"
    if teacher.is_file():
        sources["baseline"] = (teacher, None)
    for entry in sorted(p for p in unit.glob("baseline_*") if p.is_dir()):
        bundles = sorted(p for p in entry.glob("raagr2_pruned_*") if p.suffix != ".work")  # not its work folder
        pruned = bundles[0] if bundles else None
        if pruned is not None and (pruned / "models" / "model.pt").is_file():
            sources[_variant_name(entry.name)] = (pruned / "models" / "model.pt", pruned)
    return sources


def _write_variant(bundle: Path, weights: Path, compressed: Path | None) -> None:
    """``bundle``: the baseline configs with ``weights``; a compressed bundle keeps its own ``network_def``."""
    if bundle.exists():
        shutil.rmtree(bundle)  # this script's own earlier output, from other weights
    if compressed is None:
        shutil.copytree(BASELINE, bundle, ignore=shutil.ignore_patterns("models", "eval", "dist"))
    else:
        shutil.copytree(compressed, bundle, ignore=shutil.ignore_patterns("models", "eval", "dist"))
        for name in SYNCED:
            current = json.loads((BASELINE / "configs" / name).read_text())
            own = json.loads((bundle / "configs" / name).read_text())
            if "network_def" in own:
                current["network_def"] = own["network_def"]
            write_json(bundle / "configs" / name, current)
    _copy_weights(weights, bundle)


def write_fold(unit: Path, datalist: Path, out: Path) -> list[tuple[str, Path]]:
    """The bundles of one fold (``unit``: ``units/s0/f<k>``): the teacher and every compressed model; [] while the
    teacher or the plan's reference pruned model is missing. A bundle already written from the same weights is
    kept with its exports."""
    sources = _sources(unit)
    if "baseline" not in sources or "pruned" not in sources:
        return []
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "datalist.json").is_file() or (out / "datalist.json").read_bytes() != datalist.read_bytes():
        shutil.copyfile(datalist, out / "datalist.json")
    written = []
    for variant, (weights, compressed) in sources.items():
        bundle = out / variant
        current = bundle / "models" / "model.pt"
        if not (current.is_file() and sha256_file(current) == sha256_file(weights)):
            _write_variant(bundle, weights, compressed)
        written.append((variant, bundle))
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
