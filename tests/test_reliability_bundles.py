"""Fault injection through the README's bundle commands (``python -m monai.bundle run ...`` in child processes):
bad cases in a dataset, outputs aimed at inputs, stale and corrupt exports, killed exports, run folders that
belong to another run. Each failure must end with one line naming the file or key and the problem."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, TINY, bake_settings

from custom_modules.artefacts import read_manifest, sha256_file, verify_artefact
from custom_modules.handlers import save_atomic
from raagr2_tools.jobs.bundle_cli import bundle_command

pytestmark = pytest.mark.e2e


def _run(configs: list[Path], run_id: str, overrides: dict, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(bundle_command(configs, run_id, overrides), capture_output=True, text=True, cwd=cwd, env=env)


def _last(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]


def _copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def _faulty_dataset(phantom_dataset, root: Path) -> tuple[Path, Path]:
    """Copies of three phantom cases: one good, one with a NaN voxel, one with an all-zero FLAIR; plus a repeated
    case id and a case whose files are missing. Returns (dataset_dir, datalist)."""
    dataset_dir, datalist = phantom_dataset
    entries = json.loads(Path(datalist).read_text())
    cases = (entries["training"] + entries["validation"] + entries["test"])[:3]
    data = root / "data"
    for case in cases:
        shutil.copytree(Path(dataset_dir) / case["case_id"], data / case["case_id"])
    good, nan, empty = [dict(c) for c in cases]
    for entry, fault in ((nan, "nan"), (empty, "empty")):
        path = data / entry["image"][2 if fault == "nan" else 3]
        img = nib.load(path)
        array = np.asarray(img.dataobj, dtype=np.float32)
        array[tuple(s // 2 for s in array.shape)] = np.nan if fault == "nan" else 0
        array = array if fault == "nan" else np.zeros_like(array)
        nib.save(nib.Nifti1Image(array, img.affine, img.header), path)
    missing = {**good, "case_id": "Missing_001", "image": [f"Missing_001/x_{m}.nii.gz" for m in range(4)]}
    repeated = dict(good)
    test = [good, nan, empty, repeated, missing]
    path = root / "datalist.json"
    path.write_text(json.dumps({"training": [], "validation": [], "test": test}))
    return data, path


def test_inference_skips_bad_cases_names_them_and_never_writes_over_a_label(
    exported_bundles: dict[str, Path], phantom_dataset, tmp_path: Path
) -> None:
    bundle = exported_bundles["raagr2_baseline"]
    data, datalist = _faulty_dataset(phantom_dataset, tmp_path)
    good = json.loads(datalist.read_text())["test"][0]
    case_dir = data / good["case_id"]  # predictions aimed at the good case's own folder
    label = data / good["label"]
    label_sha = sha256_file(label)
    overrides = {"bundle_root": bundle, "dataset_dir": data, "data_list_file_path": datalist, "output_dir": case_dir}
    result = _run([bundle / "configs" / "inference.json"], "inference", overrides, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sha256_file(label) == label_sha
    prediction = case_dir / f"{good['case_id']}_pred.nii.gz"
    assert prediction.is_file()
    summary = json.loads((case_dir / "skipped_cases.json").read_text())
    assert summary["cases"] == 5 and summary["used"] == 1
    reasons = " | ".join(s["reason"] for s in summary["skipped"])
    for expected in ("voxels are NaN or Inf", "an empty modality", "repeats entry #0", "file(s) not found"):
        assert expected in reasons, reasons
    assert "inference: 1 of 5 cases done, 4 skipped" in result.stdout
    # a second run keeps the earlier prediction unless asked to replace it
    before = sha256_file(prediction)
    again = _run([bundle / "configs" / "inference.json"], "inference", overrides, tmp_path)
    assert again.returncode == 0 and "exists (an earlier result, kept)" in again.stdout
    assert sha256_file(prediction) == before


def test_stale_corrupt_and_unloadable_models_are_refused(exported_bundles, real_datalist, tmp_path: Path) -> None:
    from conftest import REAL_CASES

    bundle = _copy_bundle(exported_bundles["raagr2_baseline"], tmp_path / "bundle")
    models = bundle / "models"
    for name in read_manifest(models):
        verify_artefact(models / name)
    base = {"bundle_root": bundle, "dataset_dir": REAL_CASES, "data_list_file_path": real_datalist}
    overrides = {**base, "output_dir": tmp_path / "pred", "backend": "onnxruntime"}
    weights = torch.load(models / "model.pt", weights_only=True)
    save_atomic({k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()}, models / "model.pt")
    stale = _run([bundle / "configs" / "inference.json"], "inference", overrides, tmp_path)
    assert stale.returncode != 0
    assert "model.onnx: stale, exported from other weights" in _last(stale)
    assert "run export --config_file" in _last(stale)
    packaged = _run([bundle / "configs" / "export.json"], "package", {**base, "output_dir": tmp_path / "zip"}, tmp_path)
    assert packaged.returncode != 0 and "stale" in _last(packaged), _last(packaged)

    save_atomic(weights, models / "model.pt")  # the exported weights again: the exports are valid
    onnx_bytes = bytearray((models / "model.onnx").read_bytes())
    onnx_bytes[len(onnx_bytes) // 2] ^= 0xFF
    (models / "model.onnx").write_bytes(bytes(onnx_bytes))
    corrupt = _run([bundle / "configs" / "inference.json"], "inference", overrides, tmp_path)
    assert corrupt.returncode != 0 and "model.onnx: corrupt or changed after it was written" in _last(corrupt)

    (models / "manifest.json").unlink()  # no checksums: the weights must still load to be packaged
    (models / "model.pt").write_bytes((models / "model.pt").read_bytes()[:2000])
    unloadable = _run(
        [bundle / "configs" / "export.json"], "package", {**base, "output_dir": tmp_path / "zip"}, tmp_path
    )
    assert unloadable.returncode != 0
    assert f"{models / 'model.pt'}: not a readable weights file" in _last(unloadable), _last(unloadable)


def test_killed_export_leaves_the_previous_complete_set(exported_bundles, real_split_datalist, tmp_path) -> None:
    from conftest import EXPORT_TEST_SETTINGS, REAL_CASES

    bundle = _copy_bundle(exported_bundles["raagr2_baseline"], tmp_path / "bundle")
    models = bundle / "models"
    before = {p.name: sha256_file(p) for p in models.iterdir() if p.is_file() and not p.name.startswith(".")}
    overrides = {
        "bundle_root": bundle,
        "dataset_dir": REAL_CASES,
        "data_list_file_path": real_split_datalist,
        **EXPORT_TEST_SETTINGS,
    }
    command = bundle_command([bundle / "configs" / "export.json"], "export", overrides)
    child = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not any((s / "model.onnx").exists() for s in models.glob(".tmp_export_*")):
        assert child.poll() is None and time.time() < deadline, "the export ended before it could be killed"
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    after = {p.name: sha256_file(p) for p in models.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert after == before  # the previous set, untouched
    for name in read_manifest(models):
        verify_artefact(models / name)
    rerun = _run([bundle / "configs" / "export.json"], "export", {**overrides, "formats": ["onnx"]}, tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert not list(models.glob(".tmp_*")), "the killed export's staging folder is removed at the next start"
    assert "left by a run that was killed" in rerun.stdout + rerun.stderr
    for name in read_manifest(models):
        verify_artefact(models / name)


def test_training_refuses_another_runs_folder_and_a_second_writer(phantom_dataset, tmp_path: Path) -> None:
    dataset_dir, datalist = phantom_dataset
    bundle = bake_settings(REPO_ROOT / "bundles" / "raagr2_baseline", tmp_path / "bundle", TINY)
    train = [bundle / "configs" / "train.json"]
    common = {"bundle_root": bundle, "dataset_dir": dataset_dir, "data_list_file_path": datalist, "epochs": 1}
    first = _run(train, "training", common, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    other = _run(train, "training", {**common, "learning_rate": 0.01, "epochs": 2}, tmp_path)
    assert other.returncode != 0
    assert "holds a run with other learning_rate than this one" in _last(other) and "--resume force" in _last(other)
    forced = _run(train, "training", {**common, "learning_rate": 0.01, "resume": "force"}, tmp_path)
    assert forced.returncode == 0, forced.stderr[-3000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "long_run.log", "w")
    long_run = subprocess.Popen(
        bundle_command(train, "training", {**common, "epochs": 1000, "early_stop_patience": 1000, "resume": "force"}),
        cwd=tmp_path,
        env=env,
        stderr=subprocess.STDOUT,
        stdout=log,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while not (bundle / "models" / ".lock").read_text().strip() == str(long_run.pid):
            assert long_run.poll() is None and time.time() < deadline
            time.sleep(0.1)
        second = _run(train, "training", {**common, "resume": "force"}, tmp_path)
        assert long_run.poll() is None, (tmp_path / "long_run.log").read_text()[-3000:]
        assert second.returncode != 0
        assert f"another training (pid {long_run.pid}) is writing in this folder" in _last(second), _last(second)
    finally:
        if long_run.poll() is None:
            os.killpg(long_run.pid, signal.SIGKILL)
        long_run.wait()
        log.close()
