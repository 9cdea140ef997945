"""Shared fixtures: tiny phantom datasets, the project's real cases, and the tiny-network settings overlay.

Real cases and the metadata schema are read from the folder given by ``--shared-dir=DIR`` (or the environment
variable ``RAAGR2_SHARED_DIR``): ``<dir>/data/tcga_lgg_brainles`` and ``<dir>/schema/meta_schema_20240725.json``.
Tests that need them skip without it. Write the option with ``=``: as two words pytest takes ``DIR`` for a
test path before this file has registered the option.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BASELINE = REPO_ROOT / "bundles" / "raagr2_baseline"
#: set from ``--shared-dir`` in :func:`pytest_configure`, before the test modules import them
SHARED = Path("--shared-dir-not-given")
REAL_CASES = SHARED / "data" / "tcga_lgg_brainles"
SCHEMA = SHARED / "schema" / "meta_schema_20240725.json"

#: the tiny settings overlay: a narrow RAAGR2-Net and tiny crops keep bundle runs to seconds on 2 CPU cores
TINY_CONFIG = Path(__file__).resolve().parent / "configs" / "tiny.json"
TINY: dict = json.loads(TINY_CONFIG.read_text())


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--shared-dir",
        default=os.environ.get("RAAGR2_SHARED_DIR"),
        help="the project's shared folder (data/, schema/); tests that need real cases or the schema skip without it",
    )


def pytest_configure(config: pytest.Config) -> None:
    global SHARED, REAL_CASES, SCHEMA
    shared = config.getoption("--shared-dir")
    if shared:
        SHARED = Path(shared).resolve()
        REAL_CASES = SHARED / "data" / "tcga_lgg_brainles"
        SCHEMA = SHARED / "schema" / "meta_schema_20240725.json"


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Six 32x32x16 phantom cases and their patient-level datalist (2 validation cases): (dataset_dir, datalist)."""
    from data_prep.prepare import prepare_datalist
    from data_prep.synthetic import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root / "data", 6, seed=1, shape=(32, 32, 16))
    prepare_datalist(
        root / "data", root / "datalist.json", val_fraction=0.34, seed=1
    )  # 2 validation cases for 2 DDP ranks
    return root / "data", root / "datalist.json"


@pytest.fixture(scope="session")
def real_datalist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two real BrainLes cases of ``--shared-dir``, all in the ``test`` list (read in place, never copied)."""
    if not REAL_CASES.is_dir():
        pytest.skip(f"real cases not found at {REAL_CASES} (pass --shared-dir)")
    from data_prep.prepare import prepare_datalist

    out = tmp_path_factory.mktemp("real") / "datalist.json"
    prepare_datalist(REAL_CASES, out, all_test=True)
    return out


@pytest.fixture(scope="session")
def real_split_datalist(real_datalist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two real cases split by patient: the first in ``training`` (INT8 calibration), the second in ``test``."""
    content = json.loads(real_datalist.read_text())
    first, *rest = content["test"]
    path = tmp_path_factory.mktemp("real_split") / "datalist.json"
    path.write_text(json.dumps({**content, "training": [first], "test": rest}))
    return path


def assert_label_maps_match_inputs(pred_dir: Path, datalist: Path, dataset_dir: Path | None = None) -> int:
    """Every ``test`` case of ``datalist`` has ``<case_id>_pred.nii.gz`` in ``pred_dir``: a uint8 BraTS label map
    (0/1/2/4) with its input's shape and affine. Returns the number of cases checked."""
    import json

    import nibabel as nib
    import numpy as np

    dataset_dir = REAL_CASES if dataset_dir is None else dataset_dir
    cases = json.loads(Path(datalist).read_text())["test"]
    for case in cases:
        reference = nib.load(Path(dataset_dir) / case["image"][0])
        written = nib.load(Path(pred_dir) / f"{case['case_id']}_pred.nii.gz")
        assert written.shape == reference.shape
        np.testing.assert_allclose(written.affine, reference.affine, atol=1e-5)
        assert written.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2, 4}
    return len(cases)


#: every bundle folder in ``bundles/`` plus the pruned-N% bundle the compression step writes
DEPLOY_BUNDLES = ("raagr2_baseline", "raagr2_shared_depthwise", "raagr2_pruned", "raagr2_pruned_depgraph_50")


def pinned_venv(env: Path, *installs: list) -> Path:
    """A new virtual environment at ``env`` with each of ``installs`` (pip arguments, e.g. ``["-r", FILE]``) run in
    order; returns its python. For the integrations whose pinned packages conflict with the project's."""
    import subprocess
    import venv

    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    for arguments in installs:
        subprocess.run([python, "-m", "pip", "install", "-q", *map(str, arguments)], check=True)
    return python


def bake_settings(src: Path, dst: Path, settings: dict) -> Path:
    """Copy bundle ``src`` to ``dst`` (no models/eval/dist) with ``settings`` written into each config that
    already has the setting's top-level key, so that every later command needs no overrides."""
    import json
    import shutil

    from custom_modules.files import json_text
    from raagr2_tools.authoring.config import apply_overrides

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("models", "eval", "logs", "dist", "cache", "__pycache__"))
    for path in (dst / "configs").glob("*.json"):
        config = json.loads(path.read_text())
        if isinstance(config, dict):
            path.write_text(
                json_text(apply_overrides(config, {k: v for k, v in settings.items() if k.split("#")[0] in config}))
            )
    return dst


@pytest.fixture(scope="session")
def deploy_bundles(tmp_path_factory: pytest.TempPathFactory, phantom_dataset) -> dict[str, Path]:
    """Copies of every bundle in ``bundles/`` with TINY baked into their configs and a ``models/model.pt``
    from one epoch of the bundle's own training on phantoms, plus ``raagr2_pruned_depgraph_50`` written by
    the compression step (DepGraph, 50 %, one shot) from the trained baseline copy: name -> bundle folder."""
    import os

    from raagr2_tools.jobs.bundle_cli import run_bundle

    dataset_dir, datalist = phantom_dataset
    root = tmp_path_factory.mktemp("deploy_bundles")
    data = {"dataset_dir": dataset_dir, "data_list_file_path": datalist}
    bundles = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # tiny networks; two threads on a shared 2-core machine only stall
        for name in DEPLOY_BUNDLES[:3]:
            bundle = bake_settings(REPO_ROOT / "bundles" / name, root / name, TINY)
            run_bundle(
                [bundle / "configs" / "train.json"],
                "training",
                {**data, "bundle_root": bundle, "epochs": 1, "learning_rate": 1e-3},
                cwd=root,
            )
            bundles[name] = bundle
        template = bundles["raagr2_pruned"]
        compress = {
            **data,
            "bundle_root": template,
            "teacher_ckpt": bundles["raagr2_baseline"] / "models" / "model.pt",
            "method": "depgraph",
            "ratio": 0.5,
            "schedule": "oneshot",
            "variant": "baseline",
            "epochs": 1,
            "measure_latency": False,
            "output_dir": root / "compressed",
        }
        run_bundle(
            [template / "configs" / "train.json", template / "configs" / "compress.json"],
            "compress",
            compress,
            cwd=root,
        )
        os.replace(root / "compressed" / DEPLOY_BUNDLES[3], root / DEPLOY_BUNDLES[3])
        bundles[DEPLOY_BUNDLES[3]] = root / DEPLOY_BUNDLES[3]
    return bundles


#: export settings for tests: the real cases are all in ``test``, so calibration uses that list too
EXPORT_TEST_SETTINGS = {"calibration_split": "training", "calibration_slices": 8, "eval_cases": 1, "parity_slices": 4}


@pytest.fixture(scope="session")
def exported_bundles(deploy_bundles: dict[str, Path], real_split_datalist: Path, tmp_path_factory) -> dict[str, Path]:
    """``deploy_bundles`` after the documented export command, calibrated on one real patient, checked on the other."""
    from raagr2_tools.jobs.bundle_cli import run_bundle

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        for bundle in deploy_bundles.values():
            run_bundle(
                [bundle / "configs" / "export.json"],
                "export",
                {
                    "bundle_root": bundle,
                    "dataset_dir": REAL_CASES,
                    "data_list_file_path": real_split_datalist,
                    **EXPORT_TEST_SETTINGS,
                },
                cwd=tmp_path_factory.mktemp("export_cwd"),
            )
    return deploy_bundles
