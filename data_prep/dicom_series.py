"""Write NIfTI cases as DICOM MR studies: one series per modality, the input a PACS (or the MONAI Deploy app) sees.

Usage::

    python -m data_prep.dicom_series --src DATA --out DICOM [--cases ID ...]

Every case that :mod:`data_prep.prepare` finds under ``--src`` (any layout it knows, each case checked; a bad case
is skipped with one line) becomes one study ``DICOM/<case_id>/`` with four MR series, ``T1c/ T1/ T2/ FLAIR/``
(:data:`SERIES_DESCRIPTIONS`, in :data:`custom_modules.constants.MODALITY_ORDER`), one file per slice. The study
shares one Study Instance UID and one Frame of Reference; the UIDs derive from the case id, the modality and the
slice, so a second run writes the same study. A series folder that exists already is kept (never overwritten)
and named; each series is written into a temporary folder and renamed when complete.

Geometry (per slice ``k`` of a NIfTI array ``data[i, j, k]`` with RAS affine ``A``): the DICOM patient frame is
LPS, so ``L = diag(-1, -1, 1) A``; a DICOM row runs along ``i`` (Columns = size of ``i``) and a column along
``j`` (Rows = size of ``j``): Image Orientation (Patient) holds the unit vectors of ``L[:, 0]`` and ``L[:, 1]``,
Pixel Spacing ``[|L[:, 1]|, |L[:, 0]|]`` (between rows, between columns), Image Position (Patient) of slice
``k`` is ``L (0, 0, k)``, and the stored frame is ``data[:, :, k].T``. Readers that build a volume from the
series (MONAI Deploy's ``DICOMSeriesToVolumeOperator``, ITK) give back ``data`` and ``A``.

Voxel values are stored exactly where they are integers that fit 16 bits (BraTS, UPENN-GBM and most scanners'
exports: int16); other values (float phantoms) are scaled linearly to unsigned 16 bits with Rescale Slope and
Intercept, which keeps 0 as 0 when 0 is the minimum, and the series is reported as not lossless.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from custom_modules.constants import MODALITY_ORDER
from custom_modules.files import TEMP_PREFIX

from .outputs import error_line
from .prepare import prepared_cases

__all__ = ["SERIES_DESCRIPTIONS", "SeriesRecord", "case_to_dicom_study", "nifti_to_mr_series", "write_dicom_dataset"]

#: the Series Description of each modality's series (what the MONAI Deploy app's selection rules find)
SERIES_DESCRIPTIONS: dict[str, str] = {"t1c": "T1c", "t1": "T1", "t2": "T2", "flair": "FLAIR"}
#: largest deviation from orthogonal axes (cosine) that a DICOM slice stack can represent
_SHEAR_TOL = 1e-4
#: UIDs derived from a case's names (pydicom's ``generate_uid`` with entropy sources): the same case, the same UIDs
_UID_ROOT = "1.2.826.0.1.3680043.8.498."


@dataclass(frozen=True)
class SeriesRecord:
    """One series: its folder, UID, file count, whether the stored values equal the NIfTI's (``None``: kept from an
    earlier run, not written now), and whether it was kept."""

    folder: Path
    series_instance_uid: str
    files: int
    lossless: bool | None
    kept: bool = False


def _uid(*names: str) -> str:
    return generate_uid(prefix=_UID_ROOT, entropy_srcs=[str(n) for n in names])


def _lps_geometry(affine: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(row cosine, column cosine, [row spacing, column spacing, slice spacing], LPS affine) of a RAS affine."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=float)
    axes = lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"{source}: the affine has a zero-length voxel axis")
    unit = axes / spacing
    normal = np.cross(unit[:, 0], unit[:, 1])
    if abs(float(unit[:, 0] @ unit[:, 1])) > _SHEAR_TOL or abs(abs(float(normal @ unit[:, 2])) - 1) > _SHEAR_TOL:
        raise ValueError(f"{source}: the affine is sheared; a DICOM slice stack needs orthogonal voxel axes")
    return unit[:, 0], unit[:, 1], np.array([spacing[1], spacing[0], spacing[2]]), lps


def _stored_values(data: np.ndarray) -> tuple[np.ndarray, float, float, bool]:
    """(stored int16/uint16 array, slope, intercept, lossless) of a voxel array."""
    finite = np.isfinite(data)
    if not finite.all():
        raise ValueError(f"{int((~finite).sum())} voxels are NaN or Inf")
    low, high = float(data.min()), float(data.max())
    if np.array_equal(data, np.round(data)):
        if low >= np.iinfo(np.int16).min and high <= np.iinfo(np.int16).max:
            return data.astype(np.int16), 1.0, 0.0, True
        if low >= 0 and high <= np.iinfo(np.uint16).max:
            return data.astype(np.uint16), 1.0, 0.0, True
    slope = (high - low) / np.iinfo(np.uint16).max or 1.0
    stored = np.round((data.astype(np.float64) - low) / slope).astype(np.uint16)
    return stored, slope, low, False


def write_dicom_dataset(ds: Dataset, path: Path) -> None:
    """Write ``ds`` as a DICOM Part 10 file (preamble, file meta, explicit VR little endian)."""
    ds.save_as(path, enforce_file_format=True)


def nifti_to_mr_series(
    nifti: str | Path,
    out_dir: str | Path,
    series_description: str,
    series_number: int,
    patient_id: str,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
) -> SeriesRecord:
    """Write one 3D NIfTI as an MR series in ``out_dir`` (a new folder; kept as it is if it exists).

    Args:
        nifti: a 3D NIfTI file.
        out_dir: the series folder to create (``0001.dcm`` ... one per slice, Instance Number ``k + 1``).
        series_description: Series Description (e.g. ``"FLAIR"``); also the UID source with ``patient_id``.
        series_number: Series Number.
        patient_id: Patient ID and Patient's Name.
        study_uid, frame_of_reference_uid: shared by a study's series (derived from ``patient_id`` if not given).

    Raises:
        ValueError: the file is not 3D, holds NaN/Inf, or its affine cannot be a DICOM slice stack.
    """
    nifti, out_dir = Path(nifti), Path(out_dir)
    series_uid = _uid(patient_id, series_description)
    if out_dir.exists():
        return SeriesRecord(out_dir, series_uid, len(list(out_dir.glob("*.dcm"))), lossless=None, kept=True)
    image = nib.load(str(nifti))
    if len(image.shape) != 3:
        raise ValueError(f"{nifti}: shape {image.shape}, expected a 3D image")
    row_cosine, column_cosine, spacing, lps = _lps_geometry(image.affine, str(nifti))
    try:
        stored, slope, intercept, lossless = _stored_values(np.asanyarray(image.dataobj))
    except ValueError as e:
        raise ValueError(f"{nifti}: {e}") from None
    study_uid = study_uid or _uid(patient_id, "study")
    frame_uid = frame_of_reference_uid or _uid(patient_id, "frame of reference")
    now = datetime.datetime.now()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=out_dir.parent))
    try:
        for k in range(stored.shape[2]):
            sop_uid = _uid(patient_id, series_description, str(k))
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
            ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop_uid
            ds.Modality, ds.ImageType = "MR", ["DERIVED", "PRIMARY", "AXIAL"]
            ds.PatientID, ds.PatientName = patient_id, f"{patient_id}^"  # a family name only
            ds.PatientBirthDate, ds.PatientSex = "", ""
            ds.StudyInstanceUID, ds.StudyID, ds.AccessionNumber = study_uid, "1", ""
            ds.StudyDate, ds.StudyTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
            ds.StudyDescription = "raagr2-slim: NIfTI case as DICOM (data_prep.dicom_series)"
            ds.ReferringPhysicianName = ""
            ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, series_number
            ds.SeriesDescription = series_description
            ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
            ds.Manufacturer = "raagr2-slim"
            ds.PatientPosition = "HFS"
            ds.InstanceNumber = k + 1
            position = lps @ np.array([0.0, 0.0, float(k), 1.0])
            ds.ImagePositionPatient = [f"{v:.6g}" for v in position[:3]]
            ds.ImageOrientationPatient = [f"{v:.6g}" for v in (*row_cosine, *column_cosine)]
            ds.PixelSpacing = [f"{spacing[0]:.6g}", f"{spacing[1]:.6g}"]
            ds.SliceThickness = ds.SpacingBetweenSlices = f"{spacing[2]:.6g}"
            ds.SliceLocation = f"{position[2]:.6g}"
            frame = np.ascontiguousarray(stored[:, :, k].T)  # rows along j, columns along i
            ds.Rows, ds.Columns = frame.shape
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated = ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = int(frame.dtype == np.int16)
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:.10g}", f"{intercept:.10g}", "US"
            ds.PixelData = frame.tobytes()
            write_dicom_dataset(ds, tmp / f"{k + 1:04d}.dcm")
        os.chmod(tmp, 0o755)
        os.rename(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return SeriesRecord(out_dir, series_uid, stored.shape[2], lossless)


def case_to_dicom_study(
    images: Sequence[str | Path], out_dir: str | Path, patient_id: str, descriptions: Mapping[str, str] | None = None
) -> dict[str, SeriesRecord]:
    """Write a case's four 3D files (T1c, T1, T2, FLAIR) as one study: ``out_dir/<description>/`` per series.

    Raises:
        ValueError: not four files, or a file :func:`nifti_to_mr_series` refuses.
    """
    descriptions = dict(descriptions or SERIES_DESCRIPTIONS)
    if len(images) != len(MODALITY_ORDER):
        raise ValueError(f"{patient_id}: {len(images)} image files, expected {len(MODALITY_ORDER)} ({MODALITY_ORDER})")
    out_dir = Path(out_dir)
    records = {}
    for number, (modality, image) in enumerate(zip(MODALITY_ORDER, images), start=1):
        name = descriptions[modality]
        records[modality] = nifti_to_mr_series(image, out_dir / name, name, number, patient_id)
    return records


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.dicom_series", description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, required=True, help="a folder of cases (any layout data_prep knows)")
    parser.add_argument("--out", type=Path, required=True, help="the DICOM folder to write (one study per case)")
    parser.add_argument("--cases", nargs="*", default=(), help="only these case ids")
    args = parser.parse_args(argv)
    written = 0
    try:
        for case in prepared_cases(args.src, args.cases):
            try:
                records = case_to_dicom_study(case.images, args.out / case.case_id, case.case_id)
            except (ValueError, OSError) as e:
                print(f"SKIP {case.case_id}: {error_line(e)}", file=sys.stderr)
                continue
            for record in records.values():
                if record.kept:
                    print(f"KEEP {record.folder}: exists (never overwritten)", file=sys.stderr)
                elif not record.lossless:
                    print(f"NOTE {record.folder}: values scaled to 16 bits (not lossless)", file=sys.stderr)
            written += sum(not r.kept for r in records.values())
    except (OSError, RuntimeError, ValueError) as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        return 1
    print(f"{written} series written under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
