"""data_prep.dicom_series: NIfTI cases as DICOM MR series whose geometry and values read back as the NIfTI's."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from data_prep.dicom_series import SERIES_DESCRIPTIONS, case_to_dicom_study, main, nifti_to_mr_series

#: BraTS/UPENN-GBM's affine (RAS): i to the left, j to posterior, k up
BRATS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])


def _read_series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(voxel array [i, j, k], RAS affine) of a series, rebuilt from the DICOM tags by the standard's rules."""
    slices = [pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"))]
    row, column = np.array(slices[0].ImageOrientationPatient[:3]), np.array(slices[0].ImageOrientationPatient[3:])
    normal = np.cross(row, column)
    slices.sort(key=lambda s: float(np.dot(normal, np.array(s.ImagePositionPatient, dtype=float))))
    frames = [s.pixel_array * float(s.RescaleSlope) + float(s.RescaleIntercept) for s in slices]
    data = np.stack([f.T for f in frames], axis=-1)  # frame [row, column] = [j, i]
    between_rows, between_columns = (float(v) for v in slices[0].PixelSpacing)
    first, last = (np.array(s.ImagePositionPatient, dtype=float) for s in (slices[0], slices[-1]))
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = row * between_columns, column * between_rows
    lps[:3, 2] = (last - first) / (len(slices) - 1)
    lps[:3, 3] = first
    return data, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


@pytest.mark.parametrize(
    "affine",
    [
        BRATS_AFFINE,
        np.diag([1.0, 1.0, 1.0, 1.0]),
        np.array([[0, 0, 2.0, -5], [-0.9, 0, 0, 7], [0, 1.1, 0, 3], [0, 0, 0, 1]]),
    ],
    ids=["brats", "identity", "sagittal-anisotropic"],
)
def test_series_reads_back_as_the_nifti(tmp_path: Path, affine: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(-200, 3000, size=(7, 5, 4)).astype(np.int16)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "t1.nii.gz")
    record = nifti_to_mr_series(tmp_path / "t1.nii.gz", tmp_path / "T1", "T1", 2, "P1")
    assert record.lossless and record.files == 4 and not record.kept
    back, back_affine = _read_series(tmp_path / "T1")
    # the same voxels at the same places: the reader's grid maps onto the NIfTI's by whole voxels (slices sorted
    # along the slice normal may run the other way)
    to_nifti = np.linalg.inv(affine) @ back_affine
    assert np.allclose(to_nifti, np.round(to_nifti), atol=1e-4)
    index = np.indices(back.shape).reshape(3, -1)
    mapped = np.round(to_nifti[:3, :3] @ index + to_nifti[:3, 3:]).astype(int)
    assert np.array_equal(back.reshape(-1), data[tuple(mapped)])
    if np.dot(np.cross(affine[:3, 0], affine[:3, 1]), affine[:3, 2]) > 0:
        assert np.array_equal(back, data) and np.allclose(back_affine, affine, atol=1e-4)  # k along the normal
    first = pydicom.dcmread(tmp_path / "T1" / "0001.dcm")
    assert (first.Modality, first.SeriesDescription, first.PatientID, first.Rows, first.Columns) == (
        "MR",
        "T1",
        "P1",
        5,
        7,
    )
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_float_values_are_scaled_and_reported(tmp_path: Path) -> None:
    data = np.zeros((6, 6, 3), dtype=np.float32)
    data[2:4, 2:4, :] = np.linspace(0.5, 900.25, 12, dtype=np.float32).reshape(2, 2, 3)
    nib.save(nib.Nifti1Image(data, BRATS_AFFINE), tmp_path / "f.nii.gz")
    record = nifti_to_mr_series(tmp_path / "f.nii.gz", tmp_path / "F", "FLAIR", 4, "P2")
    assert record.lossless is False
    back, _ = _read_series(tmp_path / "F")
    assert np.abs(back - data).max() <= 900.25 / 65535 and np.all(back[data == 0] == 0)


def test_study_shares_uids_is_reproducible_and_never_overwritten(tmp_path: Path) -> None:
    files = []
    for m in SERIES_DESCRIPTIONS:
        files.append(tmp_path / f"C_{m}.nii.gz")
        nib.save(nib.Nifti1Image(np.full((4, 4, 2), 3, np.int16), BRATS_AFFINE), files[-1])
    records = case_to_dicom_study(files, tmp_path / "out" / "C", "C")
    assert [r.folder.name for r in records.values()] == list(SERIES_DESCRIPTIONS.values())
    heads = [pydicom.dcmread(r.folder / "0001.dcm") for r in records.values()]
    assert len({h.StudyInstanceUID for h in heads}) == 1 and len({h.FrameOfReferenceUID for h in heads}) == 1
    assert len({h.SeriesInstanceUID for h in heads}) == 4
    before = (records["t1"].folder / "0001.dcm").read_bytes()
    nib.save(nib.Nifti1Image(np.full((4, 4, 2), 9, np.int16), BRATS_AFFINE), files[1])
    again = case_to_dicom_study(files, tmp_path / "out" / "C", "C")
    assert all(r.kept for r in again.values()) and (records["t1"].folder / "0001.dcm").read_bytes() == before
    fresh = case_to_dicom_study(files, tmp_path / "other" / "C", "C")
    assert fresh["t2"].series_instance_uid == records["t2"].series_instance_uid  # UIDs derive from the case


def test_command_skips_a_bad_case_and_goes_on(phantom_dataset, tmp_path: Path, capsys) -> None:
    dataset_dir, _ = phantom_dataset
    src = tmp_path / "src"
    sheared = np.eye(4)
    sheared[0, 1] = 0.3  # consistent across the case's files (prepare keeps it), not a DICOM slice stack
    for case in ("Phantom_000", "Phantom_001"):
        (src / case).mkdir(parents=True)
        for f in (dataset_dir / case).iterdir():
            if case == "Phantom_001":
                image = nib.load(f)
                nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), sheared), src / case / f.name)
            else:
                (src / case / f.name).symlink_to(f)
    assert main(["--src", str(src), "--out", str(tmp_path / "dicom")]) == 0
    err = capsys.readouterr().err
    assert "SKIP Phantom_001: " in err and "the affine is sheared" in err
    assert not (tmp_path / "dicom" / "Phantom_001" / "T1c").exists()
    assert sorted(p.name for p in (tmp_path / "dicom" / "Phantom_000").iterdir()) == sorted(
        SERIES_DESCRIPTIONS.values()
    )
    assert "not lossless" in err  # the float phantoms are scaled, and it says so
