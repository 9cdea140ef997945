"""Shared fixtures: tiny phantom datasets, the shared real cases, and a tiny-network bundle override set."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
BASELINE = REPO_ROOT / "bundles" / "raagr2_baseline"
REAL_CASES = SHARED / "data" / "tcga_lgg_brainles"
SCHEMA = SHARED / "schema" / "meta_schema_20240725.json"

#: a narrow RAAGR2-Net and tiny crops keep bundle runs to seconds on 2 CPU cores; configs are unchanged
TINY = {
    "network_def#features": [4, 8, 16, 32, 64],
    "roi_size": [32, 32],
    "infer_roi_size": [32, 32],
    "slices_per_case": 2,
    "sw_batch_size": 16,
    "cache_rate": 1.0,
    "num_workers": 0,
}


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Six 32x32x16 phantom cases and their patient-level datalist (2 validation cases): (dataset_dir, datalist)."""
    from data_prep.prepare import prepare_datalist
    from data_prep.synthetic import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root / "data", 6, seed=1, shape=(32, 32, 16))
    prepare_datalist(root / "data", root / "datalist.json", val_fraction=0.34, seed=1)  # 2 validation cases for 2 DDP ranks
    return root / "data", root / "datalist.json"


@pytest.fixture(scope="session")
def real_datalist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two real BrainLes cases from ../shared, all in the ``test`` list (read in place, never copied)."""
    if not REAL_CASES.is_dir():
        pytest.skip(f"real cases not found at {REAL_CASES}")
    from data_prep.prepare import prepare_datalist

    out = tmp_path_factory.mktemp("real") / "datalist.json"
    prepare_datalist(REAL_CASES, out, all_test=True)
    return out


def assert_label_maps_match_inputs(pred_dir: Path, datalist: Path, dataset_dir: Path = REAL_CASES) -> int:
    """Every ``test`` case of ``datalist`` has ``<case_id>_seg.nii.gz`` in ``pred_dir``: a uint8 BraTS label map
    (0/1/2/4) with its input's shape and affine. Returns the number of cases checked."""
    import json

    import nibabel as nib
    import numpy as np

    cases = json.loads(Path(datalist).read_text())["test"]
    for case in cases:
        reference = nib.load(Path(dataset_dir) / case["image"][0])
        written = nib.load(Path(pred_dir) / f"{case['case_id']}_seg.nii.gz")
        assert written.shape == reference.shape
        np.testing.assert_allclose(written.affine, reference.affine, atol=1e-5)
        assert written.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2, 4}
    return len(cases)
