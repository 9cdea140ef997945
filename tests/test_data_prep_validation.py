"""One test per case fault: the bad case is skipped with one clear line, the others are kept."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data_prep.layouts import find_cases
from data_prep.prepare import main
from data_prep.synthetic import write_phantom_dataset
from data_prep.validation import validate_case

SHAPE = (16, 16, 8)
BAD = "Phantom_001"


def _path(src: Path, suffix: str) -> Path:
    return src / BAD / f"{BAD}_{suffix}.nii.gz"


def _rewrite(path: Path, fn: Callable[[np.ndarray], np.ndarray], affine: np.ndarray | None = None) -> None:
    img = nib.load(path)
    data = fn(np.asanyarray(img.dataobj).copy())
    nib.save(nib.Nifti1Image(data, img.affine if affine is None else affine), path)


def _set(value: float) -> Callable[[np.ndarray], np.ndarray]:
    def fn(data: np.ndarray) -> np.ndarray:
        data[8, 8, 4] = value
        return data

    return fn


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


FAULTS: dict[str, tuple[str, Callable[[Path], None], str]] = {
    # name: (file suffix, corruption, expected fault text)
    "missing_modality": ("t2", Path.unlink, "missing modality t2"),
    "missing_label": ("seg", Path.unlink, "missing label"),
    "truncated_gzip": ("t1", _truncate, "corrupt or truncated data"),
    "not_nifti": ("flair", lambda p: p.write_text("this is not an image"), "not a readable NIfTI file"),
    "shape_mismatch": ("t1ce", lambda p: _rewrite(p, lambda d: np.zeros((16, 16, 9), np.float32)), "shape mismatch"),
    "affine_mismatch": ("t2", lambda p: _rewrite(p, lambda d: d, np.diag([1.0, 1.0, 1.01, 1.0])), "affine mismatch"),
    "nan": ("flair", lambda p: _rewrite(p, _set(np.nan)), "contains NaN (1 voxels)"),
    "inf": ("t1", lambda p: _rewrite(p, _set(-np.inf)), "contains Inf (1 voxels)"),
    "bad_label": ("seg", lambda p: _rewrite(p, _set(3)), "unexpected label values [3]"),
}


@pytest.fixture
def src(tmp_path: Path) -> Path:
    write_phantom_dataset(tmp_path / "src", 3, seed=0, shape=SHAPE)
    return tmp_path / "src"


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_bad_case_skipped_others_kept(src: Path, tmp_path: Path, capsys, fault: str) -> None:
    suffix, corrupt, message = FAULTS[fault]
    corrupt(_path(src, suffix))
    out = tmp_path / "datalist.json"
    assert main(["--src", str(src), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    skips = [line for line in lines if line.startswith("SKIP")]
    assert len(skips) == 1, lines
    assert skips[0].startswith(f"SKIP {BAD}: {_path(src, suffix)}: {message}"), skips[0]
    assert any(line.startswith("found 3 cases") and "kept 2, skipped 1" in line for line in lines), lines
    datalist = json.loads(out.read_text())
    kept = sorted(e["case_id"] for k in ("training", "validation", "test") for e in datalist[k])
    assert kept == ["Phantom_000", "Phantom_002"]


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_all_test_keeps_only_unlabelled_cases(src: Path, tmp_path: Path, capsys, fault: str) -> None:
    suffix, corrupt, message = FAULTS[fault]
    corrupt(_path(src, suffix))
    out = tmp_path / "datalist.json"
    assert main(["--src", str(src), "--out", str(out), "--all-test"]) == 0
    lines = capsys.readouterr().out.splitlines()
    skips = [line for line in lines if line.startswith("SKIP")]
    entries = {e["case_id"]: e for e in json.loads(out.read_text())["test"]}
    if fault == "missing_label":  # the only fault --all-test accepts: kept, entry without "label"
        assert skips == [] and sorted(entries) == ["Phantom_000", BAD, "Phantom_002"]
        assert "label" not in entries[BAD] and all("label" in entries[c] for c in ("Phantom_000", "Phantom_002"))
        assert any("kept 3 (1 without label: test only), skipped 0" in line for line in lines), lines
    else:  # every other fault (a present label included) is still checked
        assert len(skips) == 1 and skips[0].startswith(f"SKIP {BAD}: {_path(src, suffix)}: {message}"), lines
        assert sorted(entries) == ["Phantom_000", "Phantom_002"]
        assert any("kept 2, skipped 1" in line for line in lines), lines


def test_validate_case_good_and_bad(src: Path) -> None:
    cases = {c.case_id: c for c in find_cases(src)}
    assert validate_case(cases[BAD]) == []
    _rewrite(_path(src, "seg"), _set(7))
    (problem,) = validate_case(cases[BAD])
    assert problem.startswith(f"{_path(src, 'seg')}: unexpected label values [7]")


def test_brats2023_label_4_is_a_fault(tmp_path: Path) -> None:
    folder = tmp_path / "BraTS-GLI-00000-000"
    folder.mkdir()
    for suffix in ("t1c", "t1n", "t2w", "t2f", "seg"):
        data = np.full(SHAPE, 4, np.uint8) if suffix == "seg" else np.ones(SHAPE, np.float32)
        nib.save(nib.Nifti1Image(data, np.eye(4)), folder / f"{folder.name}-{suffix}.nii.gz")
    (case,) = find_cases(tmp_path)
    (problem,) = validate_case(case)
    assert "unexpected label values [4]" in problem and "brats2023" in problem


def test_no_case_kept_exits_nonzero(src: Path, tmp_path: Path, capsys) -> None:
    for case in ("Phantom_000", "Phantom_001", "Phantom_002"):
        (src / case / f"{case}_t1.nii.gz").write_text("broken")
    out = tmp_path / "datalist.json"
    assert main(["--src", str(src), "--out", str(out)]) != 0
    text = capsys.readouterr().out
    assert text.count("SKIP") == 3 and "kept 0, skipped 3 (not a readable NIfTI file: 3)" in text
    assert "ERROR: no usable case" in text and not out.exists()


def test_missing_src_exits_nonzero(tmp_path: Path, capsys) -> None:
    assert main(["--src", str(tmp_path / "nope"), "--out", str(tmp_path / "d.json")]) != 0
    assert "does not exist" in capsys.readouterr().out
