"""The MONAI Deploy app (``integrations/monai_deploy``) for real: its pinned environment, a phantom case written as a
DICOM study by ``data_prep.dicom_series``, the app's DICOM SEG decoded with highdicom and compared voxel by voxel
with ``run inference`` on the same case, and studies the app must refuse with a line that names the series."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import REPO_ROOT, TINY, bake_settings, pinned_venv

from data_prep.dicom_series import case_to_dicom_study
from raagr2_tools.jobs.bundle_cli import run_bundle
from raagr2_tools.jobs.segment import segment
from raagr2_tools.shipping import BundlePackager

pytestmark = pytest.mark.e2e

APP = REPO_ROOT / "integrations" / "monai_deploy"
#: an existing environment made from the app's requirements file (skips building one; CI builds it)
PYTHON_ENV = "RAAGR2_DEPLOY_PYTHON"
#: BraTS's grid orientation (RAS affine of the UPENN-GBM files), on the phantoms' 32-voxel field
BRATS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 31.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
#: the tiny network, trained on more slices per case than the shared fixtures (see ``packaged_bundle``)
DEPLOY_TRAINING = {**TINY, "slices_per_case": 8}
#: SEG segment numbers -> the bundle's BraTS label values (segment n is the n-th label: 1, 2, 4)
SEGMENT_TO_LABEL = np.array([0, 1, 2, 4], dtype=np.uint8)

DECODE = """
import json, sys
import highdicom as hd
import numpy as np
seg = hd.seg.segread(sys.argv[1])
uids = json.loads(open(sys.argv[2]).read())
pixels = seg.get_pixels_by_source_instance(
    source_sop_instance_uids=uids, combine_segments=True, assert_missing_frames_are_empty=True
)
np.save(sys.argv[3], pixels)
print(json.dumps({
    "segments": {int(d.SegmentNumber): d.SegmentLabel for d in seg.SegmentSequence},
    "referenced_series": [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence],
    "modality": seg.Modality,
}))
"""


@pytest.fixture(scope="session")
def deploy_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment installed exactly as the app's README says."""
    if os.environ.get(PYTHON_ENV):
        return Path(os.environ[PYTHON_ENV])
    return pinned_venv(tmp_path_factory.mktemp("deploy_env") / "venv", ["-r", APP / "requirements.txt"])


@pytest.fixture(scope="module")
def packaged_bundle(phantom_dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny baseline trained on phantoms until its map depends on where things are (one epoch of the shared
    fixtures marks whole slices), exported to TorchScript (what the app runs), packaged and unzipped."""
    dataset_dir, datalist = phantom_dataset
    root = tmp_path_factory.mktemp("deploy_app")
    bundle = bake_settings(REPO_ROOT / "bundles" / "raagr2_baseline", root / "raagr2_baseline", DEPLOY_TRAINING)
    data = {"dataset_dir": dataset_dir, "data_list_file_path": datalist, "bundle_root": bundle}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        run_bundle(
            [bundle / "configs" / "train.json"], "training", {**data, "epochs": 6, "learning_rate": 3e-3}, cwd=root
        )
        export = {**data, "formats": ["torchscript"], "eval_split": "validation", "eval_cases": 1, "parity_slices": 4}
        run_bundle([bundle / "configs" / "export.json"], "export", export, cwd=root)
    zipped = BundlePackager(bundle, root / "dist").run()
    with zipfile.ZipFile(zipped) as z:
        z.extractall(root / "bundle")
    return root / "bundle" / "raagr2_baseline"


@pytest.fixture(scope="module")
def brats_case(phantom_dataset, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    """(NIfTI files T1c, T1, T2, FLAIR, DICOM study folder) of a phantom on BraTS's grid: integer values (stored
    exactly in DICOM) and BraTS's orientation, one corner of the brain cut so that no flip or transpose of the
    map goes unnoticed."""
    dataset_dir, _ = phantom_dataset
    root = tmp_path_factory.mktemp("brats_case")
    files = []
    for suffix in ("t1ce", "t1", "t2", "flair"):
        data = np.round(np.asanyarray(nib.load(dataset_dir / "Phantom_000" / f"Phantom_000_{suffix}.nii.gz").dataobj))
        data[:12, :10, :5] = 0
        files.append(root / f"P0_{suffix}.nii.gz")
        nib.save(nib.Nifti1Image(data.astype(np.int16), BRATS_AFFINE), files[-1])
    records = case_to_dicom_study(files, root / "dicom" / "P0", "P0")
    assert all(r.lossless for r in records.values())
    return files, root / "dicom" / "P0"


def _run_app(python: Path, study: Path, out: Path, bundle: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [str(python), str(APP / "app.py"), "--input", str(study), "--output", str(out), "--bundle", str(bundle)]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=out.parent, timeout=900)


def _sop_uids_in_slice_order(series: Path) -> list[str]:
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in series.glob("*.dcm")]
    return [h.SOPInstanceUID for h in sorted(headers, key=lambda h: int(h.InstanceNumber))]  # k = Instance - 1


def test_seg_equals_run_inference(deploy_python: Path, packaged_bundle: Path, brats_case, tmp_path: Path) -> None:
    files, study = brats_case
    out = tmp_path / "seg"
    result = _run_app(deploy_python, study, out, packaged_bundle)
    assert result.returncode == 0, result.stderr[-3000:]
    (seg_file,) = out.glob("*.dcm")
    assert f"DICOM SEG written: {seg_file}" in result.stdout

    uids = tmp_path / "uids.json"
    uids.write_text(json.dumps(_sop_uids_in_slice_order(study / "T1c")))
    decoded = subprocess.run(
        [str(deploy_python), "-c", DECODE, str(seg_file), str(uids), str(tmp_path / "seg.npy")],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(decoded.stdout.strip().splitlines()[-1])
    assert info["modality"] == "SEG" and info["segments"] == {"1": "NCR/NET", "2": "ED", "3": "ET"}
    assert info["referenced_series"] == [pydicom.dcmread(next((study / "T1c").glob("*.dcm"))).SeriesInstanceUID]
    from_seg = np.transpose(SEGMENT_TO_LABEL[np.load(tmp_path / "seg.npy")], (2, 1, 0))  # [k, row, col] -> [i, j, k]

    # run inference with the artefact the app runs (models/model.ts)
    segment(packaged_bundle, files, tmp_path / "pred", case_id="P0", overrides={"backend": "torchscript"})
    expected = np.asanyarray(nib.load(tmp_path / "pred" / "P0_pred.nii.gz").dataobj)
    assert from_seg.shape == expected.shape
    assert np.array_equal(from_seg, expected), f"{int((from_seg != expected).sum())} voxels differ"
    # the comparison can tell the grid's axes apart: the map changes under every flip and the in-plane transpose
    assert 0 < np.count_nonzero(expected) < expected.size
    variants = [np.flip(expected, axis) for axis in range(3)] + [np.transpose(expected, (1, 0, 2))]
    assert all(not np.array_equal(v, expected) for v in variants)


def _study_copy(study: Path, dst: Path, drop: tuple[str, ...] = ()) -> Path:
    for series in study.iterdir():
        if series.name not in drop:
            shutil.copytree(series, dst / series.name)
    return dst


def test_refuses_a_study_without_flair(deploy_python: Path, packaged_bundle: Path, brats_case, tmp_path) -> None:
    _, study = brats_case
    result = _run_app(
        deploy_python, _study_copy(study, tmp_path / "study", drop=("FLAIR",)), tmp_path / "out", packaged_bundle
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: study ") and "no series for FLAIR" in last
    assert all(f"'{name}'" in last for name in ("T1c", "T1", "T2"))  # what the study holds
    assert not list((tmp_path / "out").glob("*.dcm"))


def test_refuses_a_series_off_the_brats_grid(deploy_python: Path, packaged_bundle: Path, brats_case, tmp_path) -> None:
    files, study = brats_case
    coarse = tmp_path / "P0_t2_2mm.nii.gz"
    image = nib.load(files[2])
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), BRATS_AFFINE @ np.diag([1.0, 1.0, 2.0, 1.0])), coarse)
    copy = _study_copy(study, tmp_path / "study", drop=("T2",))
    from data_prep.dicom_series import nifti_to_mr_series

    nifti_to_mr_series(coarse, copy / "T2", "T2", 3, "P0")
    result = _run_app(deploy_python, copy, tmp_path / "out", packaged_bundle)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "series 'T2' (T2): voxels of 1 x 1 x 2 mm" in last and "1 mm isotropic" in last


def test_app_refuses_a_bundle_it_cannot_serve(deploy_python: Path, packaged_bundle, brats_case, tmp_path) -> None:
    _, study = brats_case
    unpackaged = shutil.copytree(packaged_bundle, tmp_path / "bundle", ignore=shutil.ignore_patterns("scripts"))
    result = _run_app(deploy_python, study, tmp_path / "out", unpackaged)
    assert result.returncode == 1
    assert "scripts/__init__.py: not found, not a packaged bundle" in result.stderr.strip().splitlines()[-1]
