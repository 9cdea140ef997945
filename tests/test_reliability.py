"""Fault injection on the runtime layer: full disks, bad cases, corrupt and stale model files, run folders that
belong to another run, and the last line of a failed command. Each test fails on the code before issue 12."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from custom_modules.artefacts import (
    COMMIT_JOURNAL,
    artefact_entry,
    commit_staged,
    complete_interrupted_commit,
    record_artefacts,
    sha256_file,
    verify_artefact,
)
from custom_modules.data import CaseDataLoader, Datalist, DatalistError, ScreenedCompose, load_datalist
from custom_modules.errors import ArtefactError, CaseInputError, RunFolderError, last_line
from custom_modules.files import remove_stale_temporaries, write_json
from custom_modules.handlers import RunGuard, WeightsLoader, save_atomic
from custom_modules.locks import FolderLock
from custom_modules.networks import RAAGR2Net
from custom_modules.transforms import LoadCased, PredictionTargetd

REPO_ROOT = Path(__file__).resolve().parents[1]
MODALITIES = ("t1c", "t1", "t2", "flair")


def _case(root: Path, case_id: str, shape=(16, 16, 8), fault: str | None = None) -> dict:
    """A tiny 4-modality case with a BraTS label; ``fault`` breaks it one way."""
    rng = np.random.default_rng(0)
    folder = root / case_id
    folder.mkdir(parents=True)
    brain = np.zeros(shape, np.float32)
    brain[2:-2, 2:-2, 1:-1] = 1
    images = []
    for i, modality in enumerate(MODALITIES):
        data = brain * (100 + rng.random(shape, dtype=np.float32) * 50)
        affine = np.eye(4)
        if fault == "nan" and modality == "t2":
            data[5, 5, 3] = np.nan
        if fault == "empty_modality" and modality == "flair":
            data[:] = 0
        if fault == "no_brain":
            data[:] = 0
        if fault == "affine" and modality == "t1":
            affine = np.diag([2.0, 1.0, 1.0, 1.0])
        path = folder / f"{case_id}_{modality}.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), path)
        images.append(str(path))
    label = (brain * 2).astype(np.uint8)
    label[6:9, 6:9, 3:5] = 4 if fault != "label_values" else 3
    label_shape = (shape[0] - 1, *shape[1:]) if fault == "label_shape" else shape
    label_path = folder / f"{case_id}_seg.nii.gz"
    nib.save(nib.Nifti1Image(label[: label_shape[0]], np.eye(4)), label_path)
    entry = {"case_id": case_id, "image": images, "label": str(label_path)}
    if fault == "channels":
        entry["image"] = images[:3]
    return entry


# --- data lost: every write is atomic, a full disk names the file ------------------------------------------------
def _limited(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("writer", ["json", "torch"])
def test_full_disk_keeps_the_old_file_and_names_it(tmp_path: Path, writer: str) -> None:
    target = tmp_path / ("result.json" if writer == "json" else "model.pt")
    if writer == "json":
        write_json(target, {"old": True})
        code = f"from custom_modules.files import write_json; write_json({str(target)!r}, {{'x': 'y' * 100000}})"
    else:
        save_atomic({"w": torch.zeros(4)}, target)
        code = (
            "import torch; from custom_modules.handlers import save_atomic; "
            f"save_atomic({{'w': torch.zeros(100000)}}, {str(target)!r})"
        )
    old = target.read_bytes()
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=_limited(20000), cwd=REPO_ROOT
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert str(target) in last and "disk is full" in last, last
    assert target.read_bytes() == old
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp_")]


def test_stale_temporaries_of_killed_runs_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".tmp_abc.pt").write_bytes(b"partial")
    (tmp_path / ".tmp_export_x").mkdir()
    (tmp_path / "model.pt").write_bytes(b"kept")
    removed = remove_stale_temporaries(tmp_path, min_age_s=0)
    assert sorted(p.name for p in removed) == [".tmp_abc.pt", ".tmp_export_x"]
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


# --- input checks: each bad case is named with its file -----------------------------------------------------------
@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("nan", "_t2.nii.gz: 1 voxels are NaN or Inf"),
        ("empty_modality", "_flair.nii.gz: every voxel is 0, an empty modality"),
        ("no_brain", "no brain, every modality is 0 everywhere"),
        ("channels", "3 image channels, the network takes 4"),
        ("affine", "cannot load"),
        ("label_shape", "label shape (15, 16, 8) differs from image (16, 16, 8)"),
        ("label_values", "label values [3.0] are not BraTS [0, 1, 2, 4]"),
    ],
)
def test_bad_case_is_refused_naming_case_and_file(tmp_path: Path, fault: str, expected: str) -> None:
    entry = _case(tmp_path, "Bad_001", fault=fault)
    with pytest.raises(CaseInputError) as error:
        LoadCased(["image", "label"])(entry)
    assert str(error.value).startswith("case Bad_001: ") and expected in str(error.value), str(error.value)


def test_good_case_passes_the_checks(tmp_path: Path) -> None:
    loaded = LoadCased(["image", "label"])(_case(tmp_path, "Good_001"))
    assert tuple(loaded["image"].shape) == (4, 16, 16, 8)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_one_bad_case_is_skipped_and_reported_the_rest_processed(tmp_path: Path, num_workers: int) -> None:
    entries = [_case(tmp_path, "A"), _case(tmp_path, "B", fault="nan"), _case(tmp_path, "C")]
    dataset = __import__("monai").data.Dataset(Datalist(entries), ScreenedCompose([LoadCased("image")]))
    loader = CaseDataLoader(dataset, batch_size=1, num_workers=num_workers)
    seen = [os.path.basename(str(batch["case_id"][0])) for batch in loader]
    assert seen == ["A", "C"]
    assert [r["case_id"] for r in loader.skipped] == ["B"] and "NaN" in loader.skipped[0]["skipped_reason"]


def test_datalist_skips_missing_files_and_repeated_case_ids(tmp_path: Path) -> None:
    good, other = _case(tmp_path, "A"), _case(tmp_path, "B")
    missing = {**other, "case_id": "M", "image": [str(tmp_path / "gone.nii.gz")] * 4}
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"test": [good, missing, {**other, "case_id": "A"}, other]}))
    with pytest.raises(DatalistError, match="case M: 4 file"):
        load_datalist(datalist, "test", tmp_path)
    entries = load_datalist(datalist, "test", tmp_path, on_bad_case="skip")
    assert [os.path.basename(e["case_id"]) for e in entries] == ["A", "B"]
    reasons = {r["case_id"]: r["skipped_reason"] for r in entries.skipped}
    assert "not found" in reasons["M"] and "repeats entry #0" in reasons["A"]


def test_prediction_never_replaces_an_input_or_an_earlier_result(tmp_path: Path) -> None:
    entry = _case(tmp_path, "A")
    # a prediction named like the label, written into the case folder, would replace the ground truth
    with pytest.raises(CaseInputError, match="would replace this input file"):
        PredictionTargetd("image", str(tmp_path / "A"), "seg")(entry)
    PredictionTargetd("image", str(tmp_path / "A"), "pred")(entry)  # the shipped name differs from any label
    (tmp_path / "A" / "A_pred.nii.gz").write_bytes(b"earlier")
    with pytest.raises(CaseInputError, match="exists .an earlier result, kept.; set overwrite true"):
        PredictionTargetd("image", str(tmp_path / "A"), "pred")(entry)
    PredictionTargetd("image", str(tmp_path / "A"), "pred", overwrite=True)(entry)
    # `--overwrite false` reaches the config as the text 'false' (fire keeps lower-case words as text)
    with pytest.raises(CaseInputError, match="exists"):
        PredictionTargetd("image", str(tmp_path / "A"), "pred", overwrite="false")(entry)
    PredictionTargetd("image", str(tmp_path / "A"), "pred", overwrite="true")(entry)
    with pytest.raises(ValueError, match="config key overwrite: 'maybe' is not a boolean"):
        PredictionTargetd("image", str(tmp_path / "A"), "pred", overwrite="maybe")


# --- artefacts know where they came from -----------------------------------------------------------------------
def _weights(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = RAAGR2Net(features=(4, 8, 16, 32, 64))
    save_atomic(net.state_dict(), folder / "models" / "model.pt")
    return folder / "models" / "model.pt"


def test_flipped_bytes_and_stale_exports_are_refused_with_the_rebuild_command(tmp_path: Path) -> None:
    weights = _weights(tmp_path)
    export = weights.parent / "model.onnx"
    export.write_bytes(b"onnx bytes " * 100)
    record_artefacts(weights.parent, {"model.onnx": "model.pt"})
    verify_artefact(export)
    data = bytearray(export.read_bytes())
    data[50] ^= 0xFF
    export.write_bytes(bytes(data))
    with pytest.raises(ArtefactError, match="corrupt or changed after it was written.*run export"):
        verify_artefact(export)
    record_artefacts(weights.parent, {"model.onnx": "model.pt"})
    _weights(tmp_path, seed=1)  # retrained: model.pt now holds other weights
    with pytest.raises(ArtefactError, match="stale, exported from other weights.*run export --config_file"):
        verify_artefact(export)


def test_weights_corrupt_truncated_empty_wrong_variant_or_unsafe_name_the_file(tmp_path: Path) -> None:
    weights = _weights(tmp_path)
    net = RAAGR2Net(features=(4, 8, 16, 32, 64))
    WeightsLoader(str(weights), {"model": net})()
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtefactError, match=f"{weights}: corrupt or changed"):
        WeightsLoader(str(weights), {"model": net})()
    cases = {
        "truncated": (lambda: weights.write_bytes(weights.read_bytes()[:1000]), "not a readable weights file"),
        "empty": (lambda: weights.write_bytes(b""), "model file is empty"),
        "unsafe": (lambda: torch.save({"w": torch.zeros(1), "code": Path("x")}, weights), "refused, it holds pickled"),
        "variant": (lambda: torch.save(RAAGR2Net(features=(4, 8, 16, 32, 32)).state_dict(), weights), "do not fit"),
    }
    for name, (make, message) in cases.items():
        _weights(tmp_path)
        make()
        record_artefacts(weights.parent, {"model.pt": None}) if name != "empty" else None
        with pytest.raises(ArtefactError, match=message) as error:
            WeightsLoader(str(weights), {"model": net})()
        assert str(weights) in str(error.value), name


def test_a_commit_killed_midway_is_completed_at_the_next_start(tmp_path: Path) -> None:
    weights = _weights(tmp_path)
    models, staging = weights.parent, weights.parent / ".tmp_export_1"
    staging.mkdir()
    for name in ("model.ts", "model.onnx"):
        (models / name).write_bytes(b"old " + name.encode())
        (staging / name).write_bytes(b"new " + name.encode())
    record_artefacts(models, {"model.ts": "model.pt", "model.onnx": "model.pt"})
    source = ("model.pt", sha256_file(weights))
    entries = {name: artefact_entry(staging / name, source) for name in ("model.ts", "model.onnx")}
    # killed after the journal and the first move: a mix on disk, which the next start completes
    write_json(models / COMMIT_JOURNAL, {"staging": staging.name, "entries": entries})
    os.replace(staging / "model.ts", models / "model.ts")
    with pytest.raises(ArtefactError, match="corrupt or changed"):
        verify_artefact(models / "model.ts")  # the mix is never used
    assert complete_interrupted_commit(models)
    for name in ("model.ts", "model.onnx"):
        assert (models / name).read_bytes() == b"new " + name.encode()
        verify_artefact(models / name)
    assert not (models / COMMIT_JOURNAL).exists()
    commit_staged(models, staging, {})  # an empty commit is harmless


# --- runs know what they are -------------------------------------------------------------------------------------
def test_resume_with_other_settings_or_data_is_refused(tmp_path: Path) -> None:
    entries = [_case(tmp_path / "data", "A")]
    run = tmp_path / "models"
    guard = RunGuard(str(run), {"learning_rate": 1e-3}, {"training": entries})
    (run / "checkpoint_last.pt").write_bytes(b"checkpoint")
    guard.lock.release()
    RunGuard(str(run), {"learning_rate": 1e-3}, {"training": entries}).lock.release()  # the same run resumes
    with pytest.raises(RunFolderError, match="other learning_rate than this one.*--resume force"):
        RunGuard(str(run), {"learning_rate": 1e-4}, {"training": entries})
    with pytest.raises(RunFolderError, match="other data"):
        RunGuard(str(run), {"learning_rate": 1e-3}, {"training": [_case(tmp_path / "data", "B")]})
    RunGuard(str(run), {"learning_rate": 1e-4}, {"training": entries}, resume="force").lock.release()


def test_two_writers_are_refused_and_a_dead_writer_releases_the_lock(tmp_path: Path) -> None:
    code = (
        f"from custom_modules.locks import FolderLock; FolderLock({str(tmp_path)!r}).acquire(); "
        "print('held', flush=True); import time; time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunFolderError, match=f"another training .pid {holder.pid}. is writing"):
        FolderLock(tmp_path, "training").acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    deadline = time.time() + 10
    while True:
        try:
            FolderLock(tmp_path, "training").acquire().release()
            break
        except RunFolderError:
            assert time.time() < deadline
            time.sleep(0.1)


# --- errors a person can act on -------------------------------------------------------------------------------------
def test_last_line_names_the_root_cause_behind_monai_wrappers() -> None:
    try:
        try:
            raise CaseInputError("A", "/data/A_t1.nii.gz: 3 voxels are NaN or Inf")
        except CaseInputError as e:
            raise RuntimeError("Failed to instantiate component 'x'") from e
    except RuntimeError as wrapped:
        assert last_line(wrapped) == "error: CaseInputError: case A: /data/A_t1.nii.gz: 3 voxels are NaN or Inf"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"data_list_file_path": "/nowhere/datalist.json"}, "datalist /nowhere/datalist.json not found"),
        ({"loss": "dice2"}, "config key 'loss': 'dice2' is not one of"),
        ({}, "the 'training' list has 0 usable case(s), at least 1 needed"),
    ],
)
def test_bundle_command_ends_with_the_cause(tmp_path: Path, override: dict, expected: str) -> None:
    from raagr2_tools.jobs.bundle_cli import bundle_command

    command = bundle_command(
        [REPO_ROOT / "bundles" / "raagr2_baseline" / "configs" / "train.json"],
        "training",
        {"bundle_root": tmp_path, "dataset_dir": tmp_path, "data_list_file_path": tmp_path / "d.json", **override},
    )
    if not override:
        (tmp_path / "d.json").write_text(json.dumps({"training": [], "validation": []}))
    if "loss" in override:
        (tmp_path / "d.json").write_text(json.dumps({"training": [_case(tmp_path, "A")], "validation": []}))
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, last


def test_a_checkpoint_changed_after_it_was_written_is_not_resumed(tmp_path: Path) -> None:
    from ignite.engine import Engine

    from custom_modules.handlers import ResumeFromCheckpoint

    net = RAAGR2Net(features=(4, 8, 16, 32, 64))
    path = tmp_path / "models" / "checkpoint_last.pt"
    save_atomic({"network": net.state_dict(), "trainer": {}}, path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="cannot resume: .*corrupt or changed after it was written.*delete it"):
        ResumeFromCheckpoint(str(path), {"network": net})(Engine(lambda engine, batch: None))


def test_main_job_refuses_a_work_folder_that_holds_a_run_on_other_data(tmp_path: Path) -> None:
    import argparse

    from data_prep.synthetic import write_phantom_dataset
    from raagr2_tools.jobs.main_job import prepare_data

    for seed in (0, 1):
        write_phantom_dataset(tmp_path / f"data{seed}", 3, seed=seed, shape=(16, 16, 8))
    workdir = tmp_path / "work"
    first = argparse.Namespace(data=tmp_path / "data0", seed=0)
    prepare_data(first, workdir, {})
    before = (workdir / "datalist.json").read_bytes()
    prepare_data(first, workdir, {})  # the same data again: fine
    (workdir / "models").mkdir()
    (workdir / "models" / "run.json").write_text("{}")  # a training ran here
    with pytest.raises(ValueError, match="holds a run on another dataset or split.*another --workdir"):
        prepare_data(argparse.Namespace(data=tmp_path / "data1", seed=0), workdir, {})
    assert (workdir / "datalist.json").read_bytes() == before
    assert not list(workdir.glob(".tmp_*"))


def test_a_failed_bundle_run_raises_with_the_childs_cause(tmp_path: Path) -> None:
    from raagr2_tools.jobs.bundle_cli import run_bundle

    overrides = {"bundle_root": tmp_path, "dataset_dir": tmp_path, "data_list_file_path": tmp_path / "none.json"}
    with pytest.raises(RuntimeError) as error:
        run_bundle([REPO_ROOT / "bundles" / "raagr2_baseline" / "configs" / "train.json"], "training", overrides)
    message = str(error.value)
    assert message.startswith("bundle run 'training' failed (exit 1): DatalistError: datalist ") and "\n" not in message
    assert f"{tmp_path / 'none.json'} not found" in message
