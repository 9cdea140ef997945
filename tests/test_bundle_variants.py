"""Variant bundles: generated files are current, and each variant works as a standalone bundle folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import REAL_CASES, REPO_ROOT, SCHEMA, TINY

from custom_modules.networks import RAAGR2Net
from raagr2_tools.authoring import write_variant_bundle
from raagr2_tools.authoring.variant import GENERATED_KEY
from raagr2_tools.jobs.bundle_cli import run_bundle

#: bundle runs in child processes: the slow end-to-end selection
pytestmark = pytest.mark.e2e

VARIANTS = sorted(p.parent for p in (REPO_ROOT / "bundles").glob("*/variant.json"))
SHARED = REPO_ROOT / "bundles" / "raagr2_shared_depthwise"


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda p: p.name)
def test_generated_files_are_current(variant: Path) -> None:
    assert write_variant_bundle(variant, check=True) == [], f"run: python -m raagr2_tools.authoring.generate {variant}"


def test_variant_states_only_differences(tmp_path: Path) -> None:
    """The generator applies MONAI ``#`` ids and leaves every other key as in the base bundle."""
    base, variant = tmp_path / "base", tmp_path / "variant"
    shutil.copytree(REPO_ROOT / "bundles" / "raagr2_baseline", base)
    variant.mkdir()
    (variant / "variant.json").write_text(
        json.dumps(
            {
                "base": "../base",
                "configs": {"train.json": {"network_def#features": [8, 16, 32, 64, 128]}},
                "metadata": {"version": "9.9.9"},
            }
        )
    )
    assert "configs/train.json" in write_variant_bundle(variant)
    made = json.loads((variant / "configs" / "train.json").read_text())
    original = json.loads((base / "configs" / "train.json").read_text())
    assert made["network_def"]["features"] == [8, 16, 32, 64, 128]
    made["network_def"].pop("features")
    assert made.pop(GENERATED_KEY).startswith("GENERATED from ../base/configs/train.json")  # says so, first
    assert made == original
    assert json.loads((variant / "configs" / "metadata.json").read_text())["version"] == "9.9.9"
    assert (variant / "LICENSE").read_bytes() == (base / "LICENSE").read_bytes()
    assert write_variant_bundle(variant, check=True) == []


def test_variant_spec_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"variant\.json not found"):
        write_variant_bundle(tmp_path)
    (tmp_path / "variant.json").write_text("{")
    with pytest.raises(ValueError, match=r"variant\.json is not valid JSON"):
        write_variant_bundle(tmp_path)


def test_shared_bundle_trains_and_segments_a_real_case(tmp_path: Path, phantom_dataset, real_datalist) -> None:
    configs = SHARED / "configs"
    dataset_dir, datalist = phantom_dataset
    run_bundle(
        [configs / "train.json"],
        "training",
        {**TINY, "bundle_root": tmp_path, "dataset_dir": dataset_dir, "data_list_file_path": datalist, "epochs": 1},
        cwd=tmp_path,
    )
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    shared = RAAGR2Net(out_channels=3, features=TINY["network_def#features"], sigmoid=False, sharing="depthwise")
    shared.load_state_dict(state, strict=True)  # the checkpoint is the shared-depthwise network

    case = json.loads(real_datalist.read_text())["test"][0]
    one_case = tmp_path / "one_case.json"
    one_case.write_text(json.dumps({"test": [case]}))
    run_bundle(
        [configs / "inference.json"],
        "inference",
        {
            "bundle_root": tmp_path,
            "dataset_dir": REAL_CASES,
            "data_list_file_path": one_case,
            "network_def#features": TINY["network_def#features"],
            "num_workers": 0,
            "output_dir": tmp_path / "pred",
        },
        cwd=tmp_path,
    )
    reference = nib.load(REAL_CASES / case["image"][0])
    written = nib.load(tmp_path / "pred" / f"{case['case_id']}_pred.nii.gz")
    assert written.shape == reference.shape and written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine, reference.affine, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda p: p.name)
def test_variant_metadata_and_network_shapes(variant: Path, tmp_path: Path) -> None:
    if not SCHEMA.is_file():
        pytest.skip(f"schema not found at {SCHEMA}")
    schema = tmp_path / "schema.json"
    shutil.copy(SCHEMA, schema)
    base = [sys.executable, "-m", "monai.bundle"]
    meta = str(variant / "configs" / "metadata.json")
    subprocess.run(base + ["verify_metadata", "--meta_file", meta, "--filepath", str(schema)], check=True, cwd=tmp_path)
    subprocess.run(
        base
        + [
            "verify_net_in_out",
            "--net_id",
            "network_def",
            "--meta_file",
            meta,
            "--config_file",
            str(variant / "configs" / "inference.json"),
            "--n",
            "12",
        ],
        check=True,
        cwd=tmp_path,
    )
