"""Build a MONAI datalist (JSON) from a folder of BraTS-style cases.

Usage::

    python -m data_prep.prepare --src DIR --out DATALIST.json [--val 0.15 --test 0.15 --seed 0] [--all-test]
                                [--patients CASES.csv]

Cases of every layout in :mod:`data_prep.layouts` are found, checked with
:func:`data_prep.validation.inspect_case` (a bad case is skipped with one ``SKIP`` line) and split
by patient with :func:`data_prep.split.split_by_patient`: each case's patient id comes from the layout's
rule in :mod:`data_prep.patients` (UPENN scan suffix, BraTS 2023 timepoint suffix, else the case id) or
from ``--patients`` (a ``case_id,patient_id`` CSV, which wins for the cases it lists). The JSON has a
small header (``description``, ``split_unit``, ``patient_ids_from``, ``dataset_dir``, ``modality_order``,
``labels``, ``seed``, fractions) and the lists ``training``, ``validation``, ``test`` of entries::

    {"case_id": str, "patient_id": str, "layout": str,
     "image": [t1c, t1, t2, flair] paths | one 4D path, "label": path}

With ``--all-test`` (segmenting new scans) a case whose label file does not exist is kept and its
entry has no ``"label"`` key (MONAI inference reads only ``"image"``); without it, it is skipped.

Conventions, the same for every layout, so one MONAI pipeline reads them all:

- **Channel order** is :data:`data_prep.layouts.MODALITY_ORDER` = T1c, T1, T2, FLAIR (as MONAI's
  model-zoo ``brats_mri_segmentation``): the four 3D paths are listed in that order; an MSD 4D
  image (stored FLAIR, T1w, T1gd, T2w) is re-ordered and written to
  ``<out_dir>/images/<case>.nii.gz`` (channels last, T1c, T1, T2, FLAIR; same dtype, affine, header).
- **Labels** are always BraTS 0/1/2/4 on disk (``ConvertToMultiChannelBasedOnBratsClassesd``
  hard-codes ET = 4). Layouts with another convention (BraTS 2023: 3 -> 4; MSD: 1, 2, 3 ->
  2, 1, 4) get a converted copy ``<out_dir>/labels/<case>_seg.nii.gz`` (uint8, same affine
  and header), see :func:`data_prep.labels.remap_labels`. Source files are never modified.
- **Paths** are relative to ``--src`` (``dataset_dir`` in the header; pass it as
  ``base_dir`` to ``monai.data.load_decathlon_datalist``) when they lie under it, absolute otherwise.

``<out_dir>`` is the folder of ``--out``; its ``images/`` and ``labels/`` are excluded from the search.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from custom_modules.files import write_json
from data_prep.labels import BRATS_LABELS, remap_labels
from data_prep.layouts import MODALITY_ORDER, Case, find_cases
from data_prep.patients import assign_patients, read_patient_csv
from data_prep.split import SPLITS, split_by_patient, split_counts
from data_prep.validation import Loaded, fault_kind, inspect_case

logger = logging.getLogger("data_prep.prepare")  # not __name__: "__main__" under python -m
GENERATED_DIRS: tuple[str, ...] = ("images", "labels")


def _rel(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` if it lies under it, else absolute (POSIX separators; links kept)."""
    path = Path(os.path.abspath(path))
    return (path.relative_to(base) if path.is_relative_to(base) else path).as_posix()


def _save_like(data: np.ndarray, like: nib.Nifti1Image, path: Path, dtype: np.dtype | None = None) -> None:
    """Write ``data`` with the affine and header of ``like`` (atomically, via a temporary file)."""
    header = like.header.copy()
    if dtype is not None:
        header.set_data_dtype(dtype)
        data = data.astype(dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    nib.save(nib.Nifti1Image(data, like.affine, header), tmp)
    os.replace(tmp, path)


def make_entry(case: Case, loaded: dict[str, Loaded], src: Path, out_dir: Path) -> dict:
    """Datalist entry of a validated case; writes re-ordered 4D images and converted labels.

    The entry has no ``"label"`` if ``loaded`` has none (unlabelled case, ``--all-test`` only).
    """
    if case.image_4d is not None:
        img, data = loaded["image"]
        order = [case.channels_4d.index(m) for m in MODALITY_ORDER]
        image_path = out_dir / "images" / f"{case.case_id}.nii.gz"
        _save_like(data[..., order], img, image_path)
        image: str | list[str] = _rel(image_path, src)
    else:
        image = [_rel(case.images[m], src) for m in MODALITY_ORDER]
    entry = {"case_id": case.case_id, "layout": case.layout, "image": image}
    if "label" not in loaded:
        return entry
    label_path = case.label
    if case.label_convention != "brats":
        img, data = loaded["label"]
        label_path = out_dir / "labels" / f"{case.case_id}_seg.nii.gz"
        _save_like(remap_labels(data, case.label_convention), img, label_path, np.dtype(np.uint8))
    return {**entry, "label": _rel(label_path, src)}


def prepare_datalist(
    src: str | os.PathLike,
    out: str | os.PathLike,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    all_test: bool = False,
    patients_csv: str | os.PathLike | None = None,
) -> dict:
    """Find, validate and split the cases under ``src``; write and return the datalist ``out``.

    With ``all_test`` every case goes to ``test`` and a case without a label file is kept (its
    entry has no ``"label"``); otherwise a missing label skips the case. ``patients_csv`` maps case ids
    to patient ids (see :func:`data_prep.patients.read_patient_csv`).

    Raises:
        FileNotFoundError: ``src`` is not a folder.
        ValueError: invalid fractions.
        RuntimeError: no case could be kept.
    """
    src, out = Path(os.path.abspath(src)), Path(os.path.abspath(out))
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} does not exist")
    split_counts(0, val_fraction, test_fraction)  # check the fractions and the CSV before the slow part
    overrides = read_patient_csv(patients_csv) if patients_csv else {}
    out_dir = out.parent
    cases = find_cases(src, exclude=[out_dir / d for d in GENERATED_DIRS])
    entries: dict[str, dict] = {}
    kept_at: dict[str, Path] = {}
    skipped: list[list[str]] = []
    for case in cases:
        if case.case_id in entries:
            problems = [f"{case.source}: duplicate case id (already kept from {kept_at[case.case_id].parent})"]
        else:
            try:
                problems, loaded = inspect_case(case, label_required=not all_test)
                if not problems:
                    entries[case.case_id] = make_entry(case, loaded, src, out_dir)
                    kept_at[case.case_id] = case.source
            except Exception as e:  # one odd case must not stop the run
                problems = [f"{case.source}: unexpected error ({type(e).__name__}: {e})"]
        if problems:
            logger.warning("SKIP %s: %s", case.case_id, "; ".join(problems))
            skipped.append(problems)

    layouts = Counter(c.layout for c in cases)
    reasons = Counter(fault_kind(p[0]) for p in skipped)
    unlabelled = sum("label" not in e for e in entries.values())
    logger.info(
        "found %d cases (%s), kept %d%s, skipped %d%s",
        len(cases),
        ", ".join(f"{k}: {v}" for k, v in sorted(layouts.items())) or "no known layout",
        len(entries),
        f" ({unlabelled} without label: test only)" if unlabelled else "",
        len(skipped),
        f" ({', '.join(f'{k}: {v}' for k, v in reasons.most_common())})" if reasons else "",
    )
    if not entries:
        raise RuntimeError(f"no usable case under {src}; nothing written")
    case_patients = assign_patients({cid: e["layout"] for cid, e in entries.items()}, overrides)
    for cid, entry in entries.items():
        entries[cid] = {"case_id": cid, "patient_id": case_patients[cid], **entry}
    split = split_by_patient(case_patients, val_fraction, test_fraction, seed, all_test)
    n_patients = len(set(case_patients.values()))
    if n_patients < 3 and not all_test:
        logger.info(
            "note: only %d patient(s), small-dataset rule of data_prep.split applied "
            "(1 patient: test only; 2 patients: 1 training + 1 test)",
            n_patients,
        )
    datalist = {
        "description": (
            "BraTS-style brain tumour datalist written by data_prep.prepare; split by patient "
            "(all scans of a patient in one list; each entry names its patient_id)"
        ),
        "split_unit": "patient",
        "patient_ids_from": (
            f"{Path(patients_csv).as_posix()}, else the layout rules of data_prep.patients"
            if patients_csv
            else "the layout rules of data_prep.patients"
        ),
        "dataset_dir": src.as_posix(),
        "modality_order": list(MODALITY_ORDER),
        "labels": {str(k): v for k, v in BRATS_LABELS.items()},
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        **{name: [entries[cid] for cid in split[name]] for name in SPLITS},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, datalist, indent=2)
    logger.info(
        "split by patient (%d patients, %d cases): %s",
        n_patients,
        len(entries),
        ", ".join(f"{n}={len(split[n])}" for n in SPLITS),
    )
    logger.info("wrote %s", out)
    return datalist


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit code (0 if at least one case was kept)."""
    parser = argparse.ArgumentParser(prog="python -m data_prep.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="folder with the cases (any supported layout)")
    parser.add_argument("--out", required=True, help="datalist JSON to write")
    parser.add_argument("--val", type=float, default=0.15, help="validation fraction (default 0.15)")
    parser.add_argument("--test", type=float, default=0.15, help="test fraction (default 0.15)")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    parser.add_argument(
        "--all-test",
        action="store_true",
        help="put every case in 'test' and keep cases without a label file (to segment a folder)",
    )
    parser.add_argument(
        "--patients",
        default=None,
        help="CSV with columns case_id,patient_id; wins over the layout rules for the cases it lists",
    )
    args = parser.parse_args(argv)

    pkg_logger = logging.getLogger("data_prep")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = pkg_logger.level
    pkg_logger.addHandler(handler)
    pkg_logger.setLevel(logging.INFO)
    try:
        prepare_datalist(args.src, args.out, args.val, args.test, args.seed, args.all_test, args.patients)
        return 0
    except (OSError, ValueError, RuntimeError) as e:
        logger.error("ERROR: %s", e)
        return 1
    finally:
        pkg_logger.removeHandler(handler)
        pkg_logger.setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
