"""The bundles' datalist loader fails with one sentence naming the file and the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from custom_modules.data import DatalistError, load_datalist


def _write(tmp_path: Path, content: dict) -> Path:
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(content))
    return path


def test_resolves_paths_against_dataset_dir(tmp_path: Path) -> None:
    for name in ("a_t1c.nii.gz", "a_seg.nii.gz"):
        (tmp_path / name).touch()
    path = _write(tmp_path, {"test": [{"case_id": "a", "image": ["a_t1c.nii.gz"], "label": "a_seg.nii.gz"}]})
    [entry] = load_datalist(path, "test", tmp_path)
    assert entry["image"] == [str(tmp_path / "a_t1c.nii.gz")] and entry["label"] == str(tmp_path / "a_seg.nii.gz")


def test_missing_datalist(tmp_path: Path) -> None:
    with pytest.raises(DatalistError, match=r"datalist .*nope\.json not found .*data_prep\.prepare"):
        load_datalist(tmp_path / "nope.json", "training", tmp_path)


def test_not_json(tmp_path: Path) -> None:
    path = tmp_path / "datalist.json"
    path.write_text("{training: ")
    with pytest.raises(DatalistError, match=r"datalist .*datalist\.json is not valid JSON"):
        load_datalist(path, "training", tmp_path)


def test_missing_list(tmp_path: Path) -> None:
    path = _write(tmp_path, {"training": []})
    with pytest.raises(DatalistError, match=r"has no 'test' list \(it has: \['training'\]\)"):
        load_datalist(path, "test", tmp_path)


def test_missing_dataset_dir(tmp_path: Path) -> None:
    path = _write(tmp_path, {"test": []})
    with pytest.raises(DatalistError, match=r"dataset_dir .*absent .* is not a folder"):
        load_datalist(path, "test", tmp_path / "absent")


def test_missing_image_file(tmp_path: Path) -> None:
    path = _write(tmp_path, {"training": [{"case_id": "b", "image": ["b_t1c.nii.gz"], "label": "b_seg.nii.gz"}]})
    with pytest.raises(DatalistError, match=r"'training' case b: 2 file\(s\) not found, first .*b_t1c\.nii\.gz"):
        load_datalist(path, "training", tmp_path)
