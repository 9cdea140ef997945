"""The training cache (``cache``/``cache_dir`` of the baseline ``train.json``) and its benchmark.

The disk cache must not change what is trained on (the same slices, flips and intensity draws for the same seed),
must rebuild an entry whose source files changed, must keep the bad-case behaviour (training refuses, validation
skips), and the benchmark's ``--tiny`` mode must write its JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import BASELINE, TINY
from monai.data import CacheDataset
from monai.utils import set_determinism

from custom_modules.data import CaseCacheDataset, case_dataset
from custom_modules.errors import CaseInputError
from custom_modules.transforms import LoadCased
from raagr2_tools.authoring.config import bundle_parser


def _parser(tmp: Path, dataset_dir: Path, datalist: Path, **overrides):
    parser = bundle_parser(BASELINE, "train.json")
    settings = {
        "bundle_root": str(tmp),
        "dataset_dir": str(dataset_dir),
        "data_list_file_path": str(datalist),
        "roi_size": [32, 32],
        "slices_per_case": 4,
        "cache_rate": 0.0,
        "num_workers": 0,
        "cache_dir": str(tmp / "cache"),
        **overrides,
    }
    for key, value in settings.items():
        parser[key] = value
    return parser


def _train_loader(tmp: Path, dataset_dir: Path, datalist: Path, **overrides):
    """The bundle's ``train#dataloader`` after ``set_determinism(seed=0)`` (the bundle's ``initialize``)."""
    parser = _parser(tmp, dataset_dir, datalist, **overrides)
    set_determinism(seed=0)
    return parser.get_parsed_content("train#dataloader")


def _epochs(loader, epochs: int = 2) -> list[list[tuple]]:
    """``epochs`` passes over ``loader`` (case ids, image and label slices of every batch), then the global
    random state is reset; the shuffling draws from it as in a training run."""
    try:
        return [
            [
                (list(b["case_id"]), torch.as_tensor(b["image"]).clone(), torch.as_tensor(b["label"]).clone())
                for b in loader
            ]
            for _ in range(epochs)
        ]
    finally:
        set_determinism(seed=None)


def _write_case(folder: Path, name: str, seed: int, nan: bool = False) -> dict:
    """A 24x24x12 case in BraTS layout (brain in the middle, a small tumour); ``nan``: one NaN voxel in FLAIR."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    label = np.zeros((24, 24, 12), np.uint8)
    label[10:14, 10:14, 5:8] = 2
    label[11:13, 11:13, 6] = 4
    files = []
    for modality in ("t1ce", "t1", "t2", "flair"):
        image = np.zeros((24, 24, 12), np.float32)
        image[4:20, 4:20, 2:10] = rng.uniform(100, 200, (16, 16, 8))
        if nan and modality == "flair":
            image[12, 12, 6] = np.nan
        files.append(folder / f"{name}_{modality}.nii.gz")
        nib.save(nib.Nifti1Image(image, np.diag([1.0, 1.0, 2.0, 1.0])), files[-1])
    nib.save(nib.Nifti1Image(label, np.diag([1.0, 1.0, 2.0, 1.0])), folder / f"{name}_seg.nii.gz")
    return {"case_id": name, "image": [str(f) for f in files], "label": str(folder / f"{name}_seg.nii.gz")}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_cached_pipeline_yields_the_same_training_samples(tmp_path: Path, phantom_dataset, num_workers: int) -> None:
    dataset_dir, datalist = phantom_dataset
    plain = _train_loader(tmp_path / "plain", dataset_dir, datalist, cache=False, num_workers=num_workers)
    assert type(plain.dataset) is CacheDataset and plain.persistent_workers == (num_workers > 0)
    expected = _epochs(plain)
    cached = _train_loader(tmp_path / "cached", dataset_dir, datalist, cache=True, num_workers=num_workers)
    assert isinstance(cached.dataset, CaseCacheDataset) and cached.persistent_workers == (num_workers > 0)
    got = _epochs(cached)  # epoch 1 builds the cache, epoch 2 reads it
    training = len(json.loads(datalist.read_text())["training"])
    assert len(list((tmp_path / "cached" / "cache").glob("*.pt"))) == training
    for epoch, (want, have) in enumerate(zip(expected, got)):
        assert len(want) == len(have) == training
        for (ids_a, image_a, label_a), (ids_b, image_b, label_b) in zip(want, have):
            assert ids_a == ids_b, f"epoch {epoch}: another case order"
            assert image_a.shape == (4, 4, 32, 32) and label_a.shape == (4, 3, 32, 32)
            assert torch.equal(image_a, image_b), f"epoch {epoch}, {ids_a}: other image slices"
            assert torch.equal(label_a, label_b), f"epoch {epoch}, {ids_a}: other label slices"
    # the random draws go on from epoch to epoch (the comparison above is not between constant samples)
    first = {ids[0]: image for ids, image, _ in got[0]}
    assert any(not torch.equal(first[ids[0]], image) for ids, image, _ in got[1])


def test_changed_source_file_rebuilds_its_entry(tmp_path: Path, monkeypatch) -> None:
    entry = _write_case(tmp_path / "data", "Case_A", seed=0)
    parser = _parser(tmp_path, tmp_path / "data", tmp_path / "unused.json")
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    dataset = CaseCacheDataset([entry], preprocessing, tmp_path / "cache")
    first = dataset[0]
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1

    loads = []
    real_call = LoadCased.__call__
    monkeypatch.setattr(LoadCased, "__call__", lambda self, data: loads.append(1) or real_call(self, data))
    again = dataset[0]
    assert not loads, "an unchanged case is read from the cache"
    assert torch.equal(again["image"], first["image"])

    # the same path, new content (and a later modification time): a new entry, built from the new file
    old = dataset.entry_path(entry)
    image = nib.load(entry["image"][0])
    data = np.asarray(image.dataobj)
    data[data > 0] = np.random.default_rng(5).uniform(1, 50, int((data > 0).sum()))
    nib.save(nib.Nifti1Image(data, image.affine), entry["image"][0])
    stat = os.stat(entry["image"][0])
    os.utime(entry["image"][0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert dataset.entry_path(entry) != old
    rebuilt = dataset[0]
    assert loads == [1], "a changed case is read again"
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2
    fresh = preprocessing(dict(entry))
    assert torch.equal(rebuilt["image"], fresh["image"]) and not torch.equal(rebuilt["image"], first["image"])


def test_cached_entry_keeps_metadata_and_an_unreadable_one_is_rebuilt(tmp_path: Path) -> None:
    entry = _write_case(tmp_path / "data", "Case_A", seed=0)
    parser = _parser(tmp_path, tmp_path / "data", tmp_path / "unused.json")
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    dataset = CaseCacheDataset([entry], preprocessing, tmp_path / "cache")
    built = dataset[0]
    loaded = dataset[0]  # from the file, read with weights_only=True
    plain = preprocessing(dict(entry))
    for key in ("image", "label"):
        assert torch.equal(loaded[key], plain[key])
        np.testing.assert_allclose(np.asarray(loaded[key].affine), np.asarray(plain[key].affine))
        np.testing.assert_allclose(loaded[key].pixdim, plain[key].pixdim)  # HD95 in mm needs the voxel size
    assert loaded["label"].pixdim.tolist() == [1.0, 1.0, 2.0]
    path = dataset.entry_path(entry)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a truncated entry (full disk, killed copy)
    rebuilt = dataset[0]
    assert torch.equal(rebuilt["image"], built["image"])
    assert torch.equal(dataset[0]["image"], built["image"]), "the rebuilt entry loads"


def test_bad_case_with_the_cache_on(tmp_path: Path) -> None:
    good = _write_case(tmp_path / "data", "Good_001", seed=0)
    bad = _write_case(tmp_path / "data", "Bad_001", seed=1, nan=True)
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [bad, good], "validation": [bad, good]}))
    common = dict(roi_size=[16, 16], slices_per_case=2)

    # training refuses a bad case with or without the cache, naming it, and caches nothing for it
    for cache in (False, True):
        loader = _train_loader(tmp_path / f"train_{cache}", tmp_path / "data", datalist, cache=cache, **common)
        with pytest.raises(Exception) as error:
            _epochs(loader, 1)
        cause = error.value
        while cause is not None and not isinstance(cause, CaseInputError):
            cause = cause.__cause__ or cause.__context__
        assert cause is not None and "case Bad_001" in str(cause) and "NaN" in str(cause), str(error.value)
    assert isinstance(loader.dataset, CaseCacheDataset) and not loader.dataset.entry_path(bad).exists()

    # validation skips it and scores the rest, on the first pass (building) and on the next (from the cache)
    parser = _parser(tmp_path / "val", tmp_path / "data", datalist, val_cache=True, **common)
    loader = parser.get_parsed_content("validate#dataloader")
    assert isinstance(loader.dataset, CaseCacheDataset)
    for _ in range(2):
        seen = [os.path.basename(str(batch["case_id"][0])) for batch in loader]
        assert seen == ["Good_001"]
        assert [r["case_id"] for r in loader.skipped] == ["Bad_001"] and "NaN" in loader.skipped[0]["skipped_reason"]
    assert len(list((tmp_path / "val" / "cache").glob("*.pt"))) == 2  # the skip record is cached too


def test_cache_key_reads_booleans_from_the_command_line(tmp_path: Path) -> None:
    entry = _write_case(tmp_path / "data", "Case_A", seed=0)
    transform = LoadCased(["image", "label"])
    assert type(case_dataset([entry], transform, cache="false", cache_dir=tmp_path / "c")) is CacheDataset
    assert isinstance(case_dataset([entry], transform, cache="true", cache_dir=tmp_path / "c"), CaseCacheDataset)
    assert type(case_dataset([entry], transform, cache=True, cache_rate=1.0, cache_dir=tmp_path / "c")) is CacheDataset
    with pytest.raises(ValueError, match="config key cache"):
        case_dataset([entry], transform, cache="sometimes", cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="cache_dir"):
        case_dataset([entry], transform, cache=True, cache_dir="")


@pytest.mark.e2e
def test_bundle_training_builds_its_cache_and_cache_false_turns_it_off(tmp_path: Path, phantom_dataset) -> None:
    from raagr2_tools.jobs.bundle_cli import run_bundle

    dataset_dir, datalist = phantom_dataset
    lists = json.loads(datalist.read_text())
    overrides = {
        **TINY,
        "cache_rate": 0.0,  # TINY keeps the cases in memory; 0 leaves them to the disk cache
        "dataset_dir": dataset_dir,
        "data_list_file_path": datalist,
        "epochs": 2,
        "learning_rate": 1e-3,
    }
    # command-line booleans arrive as text ('true'/'false'): config_bool reads them
    run = {**overrides, "bundle_root": tmp_path / "cached", "val_cache": "true"}
    run_bundle([BASELINE / "configs" / "train.json"], "training", run, cwd=tmp_path)
    entries = list((tmp_path / "cached" / "cache").glob("*.pt"))
    assert len(entries) == len(lists["training"]) + len(lists["validation"])
    assert (tmp_path / "cached" / "models" / "model.pt").is_file()

    run = {**overrides, "bundle_root": tmp_path / "plain", "cache": "false", "epochs": 1}
    run_bundle([BASELINE / "configs" / "train.json"], "training", run, cwd=tmp_path)
    assert not (tmp_path / "plain" / "cache").exists()
    assert (tmp_path / "plain" / "models" / "model.pt").is_file()


def test_benchmark_tiny_writes_its_json(tmp_path: Path) -> None:
    from benchmarks import training_throughput

    out = tmp_path / "result.json"
    assert training_throughput.main(["--tiny", "--workdir", str(tmp_path / "work"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["cases"] == 3 and result["settings"]["tiny"] is True
    assert result["machine"]["cpu_model"] and "cpu_flags" in result["machine"]
    for pipeline in ("current", "cached_first_epoch", "cached"):
        spread = result["data"][pipeline]["slices_per_s"]
        assert len(spread["all"]) == 3 and spread["min"] <= spread["median"] <= spread["max"]
        assert result["data"][pipeline]["slices_per_epoch"] == 3 * 2
    assert result["network"]["fp32"]["steps_per_s"]["median"] > 0
    assert {b["bound"] for b in result["bounds"]} <= {"data", "network"}
    assert len(result["bounds"]) == 3 * len(result["network"])
    assert "| data: cached, later epoch |" in result["markdown"]
    assert not (tmp_path / "work" / "cache").exists(), "the benchmark removes its cache"
    # the phantoms are reused by a second run
    training_throughput.ensure_phantoms(tmp_path / "work" / "phantoms_32x32x16_seed0", 3, (32, 32, 16))
    assert (
        training_throughput.ensure_phantoms(tmp_path / "work" / "phantoms_32x32x16_seed0", 3, (32, 32, 16))["generated"]
        == 0
    )


def test_benchmark_refuses_a_workdir_in_the_repository() -> None:
    from benchmarks import training_throughput

    with pytest.raises(SystemExit, match="inside the repository"):
        training_throughput.main(["--tiny", "--workdir", str(training_throughput.REPO_ROOT / "runs" / "x")])
