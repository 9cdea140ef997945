"""The baseline bundle through the real ``python -m monai.bundle`` CLI: train, resume, evaluate, infer, verify."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import BASELINE, REAL_CASES, SCHEMA, TINY, assert_label_maps_match_inputs

from raagr2_tools.jobs.bundle_cli import bundle_command, run_bundle

#: bundle runs in child processes: the slow end-to-end selection
pytestmark = pytest.mark.e2e

CONFIGS = BASELINE / "configs"


def _train_overrides(bundle_root: Path, dataset: tuple[Path, Path], epochs: int) -> dict:
    dataset_dir, datalist = dataset
    return {
        **TINY,
        "bundle_root": bundle_root,
        "dataset_dir": dataset_dir,
        "data_list_file_path": datalist,
        "epochs": epochs,
        "learning_rate": 1e-3,
    }


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory: pytest.TempPathFactory, phantom_dataset) -> Path:
    """A bundle root holding a 2-epoch tiny training run (run from an unrelated working directory)."""
    root = tmp_path_factory.mktemp("baseline_run")
    run_bundle([CONFIGS / "train.json"], "training", _train_overrides(root, phantom_dataset, 2), cwd=root.parent)
    return root


def test_training_writes_checkpoints_tensorboard_and_metrics(trained_bundle: Path) -> None:
    models = trained_bundle / "models"
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    assert state["head.weight"].shape[0] == 3  # the bundle's TC, WT, ET region outputs
    last = torch.load(models / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 2
    assert {"network", "optimizer", "lr_scheduler", "evaluator_best"} <= set(last)
    assert list((trained_bundle / "eval" / "tensorboard").glob("events.out.tfevents.*"))
    report = json.loads((trained_bundle / "eval" / "val_per_case_metrics.json").read_text())
    assert report["epoch"] == 2 and report["cases"]
    row = report["cases"][0]
    for key in ("wt_dice", "tc_dice", "et_dice", "wt_hd95", "tc_hd95", "et_hd95", "ref_soft_dice", "ref_miou"):
        assert np.isfinite(row[key]), key
    assert not list(models.glob(".tmp_*")), "atomic saves must not leave temporary files"


def test_killed_training_resumes_from_last_checkpoint(tmp_path: Path, phantom_dataset) -> None:
    overrides = _train_overrides(tmp_path, phantom_dataset, 4)
    command = bundle_command([CONFIGS / "train.json"], "training", overrides)
    checkpoint = tmp_path / "models" / "checkpoint_last.pt"
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert checkpoint.exists(), "no checkpoint written before the kill"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    epoch_at_kill = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= epoch_at_kill <= 4

    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed from {checkpoint} after epoch {epoch_at_kill} of 4" in resumed.stdout + resumed.stderr
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 4


def test_evaluate_and_infer_on_real_cases(trained_bundle: Path, real_datalist: Path, tmp_path: Path) -> None:
    common = {
        "bundle_root": trained_bundle,
        "dataset_dir": REAL_CASES,
        "data_list_file_path": real_datalist,
        "network_def#features": TINY["network_def#features"],
        "num_workers": 0,
    }
    run_bundle(
        [CONFIGS / "train.json", CONFIGS / "evaluate.json"],
        "run",
        {**common, "output_dir": tmp_path / "eval", "infer_roi_size": [240, 240]},
        cwd=tmp_path,
    )
    report = json.loads((tmp_path / "eval" / "per_case_metrics.json").read_text())
    assert sorted(c["case"] for c in report["cases"]) == ["OtherEXampleFromTCIA", "TCGA-DU-7294"]
    assert (tmp_path / "eval" / "per_case_metrics.csv").read_text().count("\n") == 4  # header, 2 cases, mean

    run_bundle([CONFIGS / "inference.json"], "inference", {**common, "output_dir": tmp_path / "pred"}, cwd=tmp_path)
    assert assert_label_maps_match_inputs(tmp_path / "pred", real_datalist) == 2


def test_verify_metadata_and_net_in_out(tmp_path: Path) -> None:
    if not SCHEMA.is_file():
        pytest.skip(f"schema not found at {SCHEMA}")
    schema = tmp_path / "schema.json"
    shutil.copy(SCHEMA, schema)  # verify_metadata skips the download when the file exists
    base = [sys.executable, "-m", "monai.bundle"]
    meta = str(CONFIGS / "metadata.json")
    subprocess.run(base + ["verify_metadata", "--meta_file", meta, "--filepath", str(schema)], check=True, cwd=tmp_path)
    for n in ("1", "12"):
        subprocess.run(
            base
            + [
                "verify_net_in_out",
                "--net_id",
                "network_def",
                "--meta_file",
                meta,
                "--config_file",
                str(CONFIGS / "inference.json"),
                "--n",
                n,
            ],
            check=True,
            cwd=tmp_path,
        )


def test_metadata_rejects_missing_required_field(tmp_path: Path) -> None:
    if not SCHEMA.is_file():
        pytest.skip(f"schema not found at {SCHEMA}")
    schema = tmp_path / "schema.json"
    shutil.copy(SCHEMA, schema)
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    del meta["required_packages_version"]
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(meta))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "verify_metadata",
            "--meta_file",
            str(broken),
            "--filepath",
            str(schema),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "required_packages_version" in result.stdout + result.stderr


def test_ddp_two_processes_on_cpu(tmp_path: Path, phantom_dataset) -> None:
    overrides = _train_overrides(tmp_path, phantom_dataset, 1)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        "--nproc_per_node=2",
        *bundle_command([CONFIGS / "train.json", CONFIGS / "multi_gpu_train.json"], "training", overrides)[1:],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "models" / "model.pt").is_file()
    assert torch.load(tmp_path / "models" / "checkpoint_last.pt", weights_only=True)["epoch"] == 1


def test_inference_on_one_four_channel_nifti(trained_bundle: Path, phantom_dataset, tmp_path: Path) -> None:
    """MONAI Label style input: one 4D NIfTI (channels last) instead of four files."""
    dataset_dir, datalist = phantom_dataset
    case = json.loads(datalist.read_text())["test"][0]
    first = nib.load(dataset_dir / case["image"][0])
    stacked = np.stack([np.asarray(nib.load(dataset_dir / p).dataobj) for p in case["image"]], axis=-1)
    nib.save(nib.Nifti1Image(stacked, first.affine), tmp_path / "case4d.nii.gz")
    (tmp_path / "datalist.json").write_text(json.dumps({"test": [{"case_id": "case4d", "image": "case4d.nii.gz"}]}))
    run_bundle(
        [CONFIGS / "inference.json"],
        "inference",
        {
            "bundle_root": trained_bundle,
            "dataset_dir": tmp_path,
            "data_list_file_path": tmp_path / "datalist.json",
            "network_def#features": TINY["network_def#features"],
            "infer_roi_size": TINY["infer_roi_size"],
            "num_workers": 0,
            "output_dir": tmp_path / "pred",
        },
        cwd=tmp_path,
    )
    written = nib.load(tmp_path / "pred" / "case4d_pred.nii.gz")
    assert written.shape == first.shape and written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine, first.affine, atol=1e-5)
