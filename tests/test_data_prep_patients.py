"""Splits group the scans of one patient: layout rules, the explicit CSV, and the datalist's patient ids."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data_prep.patients import patient_id, read_patient_csv
from data_prep.prepare import prepare_datalist
from data_prep.split import SPLITS, kfold_by_patient, split_by_patient

SHAPE = (8, 8, 4)


def _case(folder: Path, stem: str, suffixes: tuple[str, ...], sep: str, label: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in suffixes:
        nib.save(nib.Nifti1Image(np.ones(SHAPE, np.float32), np.eye(4)), folder / f"{stem}{sep}{suffix}.nii.gz")
    seg = np.zeros(SHAPE, np.uint8)
    seg[2:4, 2:4, 1:3] = 1
    label.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(seg, np.eye(4)), label)


def write_upenn_scans(root: Path, patients: int) -> None:
    """Two scans (``_11`` pre-op, ``_21`` post-op) of each UPENN patient."""
    for p in range(patients):
        for scan in ("11", "21"):
            cid = f"UPENN-GBM-{p:05d}_{scan}"
            label = root / "images_segm" / f"{cid}_segm.nii.gz"
            _case(root / "images_structural" / cid, cid, ("T1GD", "T1", "T2", "FLAIR"), "_", label)


def write_brats2023_timepoints(root: Path, patients: int) -> None:
    for p in range(patients):
        for tp in ("000", "001"):
            cid = f"BraTS-GLI-{p:05d}-{tp}"
            _case(root / cid, cid, ("t1c", "t1n", "t2w", "t2f"), "-", root / cid / f"{cid}-seg.nii.gz")


def _patients_of(datalist: dict) -> dict[str, set[str]]:
    return {name: {e["patient_id"] for e in datalist[name]} for name in SPLITS}


@pytest.mark.parametrize(
    "case_id, layout, patient",
    [
        ("UPENN-GBM-00003_11", "upenn_gbm", "UPENN-GBM-00003"),
        ("UPENN-GBM-00003_21", "upenn_gbm", "UPENN-GBM-00003"),
        ("BraTS-GLI-00001-000", "brats2023", "BraTS-GLI-00001"),
        ("BraTS-GLI-00001-001", "brats2023", "BraTS-GLI-00001"),
        ("BraTS2021_00001", "brats2021", "BraTS2021_00001"),
        ("BRATS_005", "msd", "BRATS_005"),
        ("TCGA-DU-7294", "brainles", "TCGA-DU-7294"),
    ],
)
def test_patient_id_rules(case_id: str, layout: str, patient: str) -> None:
    assert patient_id(case_id, layout) == patient


@pytest.mark.parametrize("writer", [write_upenn_scans, write_brats2023_timepoints])
def test_scans_of_one_patient_never_in_two_splits(tmp_path: Path, writer) -> None:
    writer(tmp_path / "src", patients=6)
    for seed in range(4):
        datalist = prepare_datalist(tmp_path / "src", tmp_path / f"d{seed}.json", 0.2, 0.2, seed=seed)
        by_split = _patients_of(datalist)
        assert sum(len(v) for v in by_split.values()) == 6
        assert not (by_split["training"] & by_split["test"]) and not (by_split["training"] & by_split["validation"])
        assert not (by_split["validation"] & by_split["test"])
        assert all(len(datalist[s]) == 2 * len(by_split[s]) for s in SPLITS)  # both scans travel together
    written = json.loads((tmp_path / "d0.json").read_text())
    assert written["split_unit"] == "patient" and "patient_ids_from" in written


def test_patient_csv_groups_cases_the_rules_cannot_see(tmp_path: Path) -> None:
    for i in range(6):  # BraTS 2021 ids hide repeat scans: the CSV says 00000..00005 are 3 patients
        cid = f"BraTS2021_{i:05d}"
        _case(
            tmp_path / "src" / cid,
            cid,
            ("t1ce", "t1", "t2", "flair"),
            "_",
            tmp_path / "src" / cid / f"{cid}_seg.nii.gz",
        )
    csv = tmp_path / "patients.csv"
    csv.write_text("case_id,patient_id\n" + "".join(f"BraTS2021_{i:05d},P{i // 2}\n" for i in range(6)))
    datalist = prepare_datalist(tmp_path / "src", tmp_path / "d.json", 0.2, 0.3, seed=0, patients_csv=csv)
    by_split = _patients_of(datalist)
    assert set().union(*by_split.values()) == {"P0", "P1", "P2"}
    assert all(len(datalist[s]) == 2 * len(by_split[s]) for s in SPLITS)
    assert str(csv.as_posix()) in datalist["patient_ids_from"]


def test_patient_csv_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("case,patient\na,b\n")
    with pytest.raises(ValueError, match=r"bad\.csv: header must name case_id, patient_id"):
        read_patient_csv(bad)
    bad.write_text("case_id,patient_id\na,P1\na,P2\n")
    with pytest.raises(ValueError, match=r"bad\.csv, line 3: case a mapped to both P1 and P2"):
        read_patient_csv(bad)
    bad.write_text("case_id,patient_id\na,\n")
    with pytest.raises(ValueError, match=r"bad\.csv, line 2: empty"):
        read_patient_csv(bad)
    with pytest.raises(ValueError, match=r"nope\.csv not found"):
        read_patient_csv(tmp_path / "nope.csv")


def test_split_counts_patients_not_scans() -> None:
    cases = {f"s{i}": f"p{i // 3}" for i in range(9)}  # 3 patients x 3 scans
    split = split_by_patient(cases, 0.3, 0.3, seed=0)
    assert [len(split[s]) for s in SPLITS] == [3, 3, 3]


def test_kfold_by_patient_tests_every_patient_once() -> None:
    cases = {f"UPENN-GBM-{p:05d}_{s}": f"UPENN-GBM-{p:05d}" for p in range(5) for s in ("11", "21")}
    folds = kfold_by_patient(cases, k=5, seed=1)
    tested = [c for f in folds for c in f["test"]]
    assert sorted(tested) == sorted(cases)
    for fold in folds:
        assert len(fold["test"]) == 2 and not {cases[c] for c in fold["test"]} & {cases[c] for c in fold["training"]}
    with pytest.raises(ValueError, match="k=6"):
        kfold_by_patient(cases, k=6)
