"""``python -m data_prep.stack``: one channels-last 4D NIfTI per case (T1c, T1, T2, FLAIR) and the MONAI Label
datastore's ``labels/final`` maps."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data_prep.stack import LABELS_DIR, main, stack_case


def test_every_case_becomes_one_4d_study_with_its_label(phantom_dataset, tmp_path: Path, capsys) -> None:
    dataset_dir, datalist = phantom_dataset
    content = json.loads(datalist.read_text())
    entries = {e["case_id"]: e for split in ("training", "validation", "test") for e in content[split]}
    out = tmp_path / "studies"
    assert main(["--src", str(dataset_dir), "--out", str(out), "--labels"]) == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(f"{c}.nii.gz" for c in entries)
    case, entry = next(iter(sorted(entries.items())))
    study = nib.load(out / f"{case}.nii.gz")
    first = nib.load(dataset_dir / entry["image"][0])
    assert study.shape == (*first.shape, 4)
    np.testing.assert_allclose(study.affine, first.affine)
    for channel, path in enumerate(entry["image"]):  # channels in the datalist's order: T1c, T1, T2, FLAIR
        modality = np.asarray(nib.load(dataset_dir / path).dataobj)
        np.testing.assert_array_equal(np.asarray(study.dataobj)[..., channel], modality)
    label = nib.load(out / LABELS_DIR / f"{case}.nii.gz")
    np.testing.assert_array_equal(np.asarray(label.dataobj), np.asarray(nib.load(dataset_dir / entry["label"]).dataobj))
    before = (out / f"{case}.nii.gz").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["--src", str(dataset_dir), "--out", str(out), "--cases", case]) == 0
    assert f"KEEP {out / f'{case}.nii.gz'}: exists" in capsys.readouterr().err
    assert (out / f"{case}.nii.gz").stat().st_mtime_ns == before


def test_modalities_on_different_grids_are_refused(tmp_path: Path) -> None:
    files = []
    for i, shape in enumerate([(4, 4, 3)] * 3 + [(4, 4, 2)]):
        files.append(tmp_path / f"m{i}.nii.gz")
        nib.save(nib.Nifti1Image(np.ones(shape, np.int16), np.eye(4)), str(files[-1]))
    with pytest.raises(ValueError, match=r"m3.nii.gz: shape \(4, 4, 2\)"):
        stack_case(files, tmp_path / "out.nii.gz")
    assert not (tmp_path / "out.nii.gz").exists()
