"""Reliability of ``python -m data_prep.prepare`` and ``python -m data_prep.synthetic``: no input is written over,
empty scans and duplicate case ids are skipped, a failed command ends with one line naming the file and the
problem, and a full disk leaves the old files as they were."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data_prep.layouts import find_cases
from data_prep.prepare import main, prepare_datalist
from data_prep.synthetic import MANIFEST, write_phantom_dataset
from data_prep.validation import validate_case

REPO = Path(__file__).resolve().parents[1]
SHAPE = (32, 32, 16)
SIZE = [str(s) for s in SHAPE]
SUFFIXES = ("t1ce", "t1", "t2", "flair", "seg")


def _run(module: str, *args: str | Path, fsize: int | None = None) -> subprocess.CompletedProcess:
    """``python -m data_prep.<module> args`` in the repository; with ``fsize`` no file may grow past that many
    bytes (a write past it fails with EFBIG, as on a full disk)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return subprocess.run(
        [sys.executable, "-m", f"data_prep.{module}", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        preexec_fn=limit if fsize is not None else None,
        timeout=120,
    )


def _last_error(result: subprocess.CompletedProcess) -> str:
    """The last stderr line of a failed run (it must fail and end with ``error: ...``)."""
    assert result.returncode != 0, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert lines, result.stdout
    assert lines[-1].startswith("error: "), result.stderr
    return lines[-1]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".tmp*")]


def _kept(datalist: Path) -> list[str]:
    content = json.loads(datalist.read_text())
    return sorted(e["case_id"] for k in ("training", "validation", "test") for e in content[k])


def _skips(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("SKIP")]


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """Three 32x32x16 phantoms (BraTS 2018-2021 layout)."""
    write_phantom_dataset(tmp_path / "src", 3, seed=0, shape=SHAPE)
    return tmp_path / "src"


def _file(src: Path, case: str, suffix: str) -> Path:
    return src / case / f"{case}_{suffix}.nii.gz"


def _write_brats2023_underscore(folder: Path, cid: str) -> Path:
    """A BraTS 2023 case with ``_`` separators (label values 0/1/2/3); returns its label path."""
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in ("t1c", "t1n", "t2w", "t2f"):
        nib.save(nib.Nifti1Image(np.full(SHAPE, 5.0, np.float32), np.eye(4)), folder / f"{cid}_{suffix}.nii.gz")
    label = np.zeros(SHAPE, np.uint8)
    label.flat[:4] = (0, 1, 2, 3)
    nib.save(nib.Nifti1Image(label, np.eye(4)), folder / f"{cid}_seg.nii.gz")
    return folder / f"{cid}_seg.nii.gz"


def _write_msd(task: Path, cid: str = "BRATS_001") -> Path:
    """One MSD Task01 case (4D image, labels 0-3); returns the 4D image path."""
    image = np.stack([np.full(SHAPE, float(k + 1), np.float32) for k in range(4)], -1)
    (task / "imagesTr").mkdir(parents=True, exist_ok=True)
    (task / "labelsTr").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, np.eye(4)), task / "imagesTr" / f"{cid}.nii.gz")
    label = np.zeros(SHAPE, np.uint8)
    label.flat[:4] = (0, 1, 2, 3)
    nib.save(nib.Nifti1Image(label, np.eye(4)), task / "labelsTr" / f"{cid}.nii.gz")
    return task / "imagesTr" / f"{cid}.nii.gz"


# 1. prepare never writes over an input


def test_out_that_is_a_case_label_is_refused(src: Path) -> None:
    label = _file(src, "Phantom_001", "seg")
    before = label.read_bytes()
    line = _last_error(_run("prepare", "--src", src, "--out", label))
    assert line.startswith(f"error: {label}: --out is the label of case Phantom_001"), line
    assert label.read_bytes() == before
    assert nib.load(label).shape == SHAPE


def test_out_not_ending_in_json_is_refused(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "datalist.txt"
    line = _last_error(_run("prepare", "--src", src, "--out", out))
    assert line == f"error: {out}: --out must name the datalist file to write, ending in .json"
    assert not out.exists()


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_out_that_resolves_to_a_case_file_is_refused(src: Path, tmp_path: Path, link: str) -> None:
    target = _file(src, "Phantom_002", "t1" if link == "hardlink" else "seg")
    out = tmp_path / "datalist.json"
    os.symlink(target, out) if link == "symlink" else os.link(target, out)
    before = target.read_bytes()
    line = _last_error(_run("prepare", "--src", src, "--out", out))
    assert f"{out}: --out is" in line and "of case Phantom_002" in line and str(target) in line, line
    assert target.read_bytes() == before and os.path.lexists(out)
    assert out.is_symlink() == (link == "symlink")


@pytest.mark.parametrize(
    "content",
    [
        '{"name": "BRATS", "training": [], "test": []}',  # MSD's dataset.json: JSON, not prepare's datalist
        "[1, 2, 3]",
        "not json at all",
    ],
)
def test_existing_file_that_is_not_a_prepare_datalist_is_refused(src: Path, content: str) -> None:
    out = src / "dataset.json"
    out.write_text(content)
    line = _last_error(_run("prepare", "--src", src, "--out", out))
    assert f"{out}: --out exists and is not a datalist written by data_prep.prepare" in line, line
    assert out.read_text() == content


def test_own_datalist_is_rewritten(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "datalist.json"
    assert main(["--src", str(src), "--out", str(out), "--seed", "0"]) == 0
    assert main(["--src", str(src), "--out", str(out), "--seed", "1"]) == 0
    assert json.loads(out.read_text())["seed"] == 1 and _kept(out) == ["Phantom_000", "Phantom_001", "Phantom_002"]


def test_converted_copy_never_replaces_a_source_label(tmp_path: Path) -> None:
    """``--src X/labels --out X/datalist.json``: the converted copy ``X/labels/<case>_seg.nii.gz`` would be the
    BraTS 2023 case's own label."""
    label = _write_brats2023_underscore(tmp_path / "labels", "BraTS-GLI-00001-000")
    before = _snapshot(tmp_path / "labels")
    line = _last_error(_run("prepare", "--src", tmp_path / "labels", "--out", tmp_path / "datalist.json"))
    assert f"{label}: a converted copy would replace the label of case BraTS-GLI-00001-000" in line, line
    assert _snapshot(tmp_path / "labels") == before and not (tmp_path / "datalist.json").exists()
    assert _temporaries(tmp_path) == []


def test_converted_copy_written_atomically(tmp_path: Path) -> None:
    """A full disk while rewriting a converted MSD image leaves the old copy, no temporary file, and one line."""
    _write_msd(tmp_path / "Task01")
    out = tmp_path / "out" / "datalist.json"
    first = _run("prepare", "--src", tmp_path / "Task01", "--out", out, "--all-test")
    assert first.returncode == 0, first.stdout + first.stderr
    copy = tmp_path / "out" / "images" / "BRATS_001.nii.gz"
    before = copy.read_bytes()
    result = _run("prepare", "--src", tmp_path / "Task01", "--out", out, "--all-test", fsize=len(before) // 2)
    line = _last_error(result)
    assert str(copy) in line and "converted copy" in line, line
    assert copy.read_bytes() == before and _temporaries(tmp_path) == []


# 2. empty modalities and cases without a brain


def _zero(path: Path) -> None:
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.float32), img.affine), path)


def test_all_zero_modality_is_skipped(src: Path, tmp_path: Path) -> None:
    t2 = _file(src, "Phantom_001", "t2")
    _zero(t2)
    out = tmp_path / "datalist.json"
    result = _run("prepare", "--src", src, "--out", out)
    assert result.returncode == 0, result.stderr
    assert _skips(result) == [f"SKIP Phantom_001: {t2}: all voxels are 0: an empty modality t2"], result.stdout
    assert "skipped 1 (all voxels are 0: 1)" in result.stdout
    assert _kept(out) == ["Phantom_000", "Phantom_002"]


def test_case_without_brain_is_skipped(src: Path, tmp_path: Path) -> None:
    for suffix in SUFFIXES[:4]:
        _zero(_file(src, "Phantom_002", suffix))
    out = tmp_path / "datalist.json"
    result = _run("prepare", "--src", src, "--out", out, "--all-test")
    assert result.returncode == 0, result.stderr
    expected = f"SKIP Phantom_002: {src / 'Phantom_002'}: no brain: every modality is 0 everywhere"
    assert _skips(result) == [expected], result.stdout
    assert _kept(out) == ["Phantom_000", "Phantom_001"]


def test_msd_empty_channel_is_a_problem(tmp_path: Path) -> None:
    image_path = _write_msd(tmp_path)
    img = nib.load(image_path)
    data = np.asanyarray(img.dataobj).copy()
    data[..., 2] = 0  # T1gd
    nib.save(nib.Nifti1Image(data, img.affine), image_path)
    (case,) = find_cases(tmp_path)
    assert validate_case(case) == [f"{image_path}: all voxels are 0: an empty channel 2 (t1c)"]
    nib.save(nib.Nifti1Image(np.zeros_like(data), img.affine), image_path)
    assert validate_case(case) == [f"{image_path}: no brain: every modality is 0 everywhere"]


def test_nan_still_reported_next_to_an_empty_modality(src: Path) -> None:
    _zero(_file(src, "Phantom_000", "t1"))
    flair = _file(src, "Phantom_000", "flair")
    img = nib.load(flair)
    data = np.asanyarray(img.dataobj).copy()
    data[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), flair)
    case = next(c for c in find_cases(src) if c.case_id == "Phantom_000")
    assert sorted(validate_case(case)) == sorted(
        [
            f"{flair}: contains NaN (1 voxels)",
            f"{_file(src, 'Phantom_000', 't1')}: all voxels are 0: an empty modality t1",
        ]
    )


# 3. one case id, one entry


def _copy_case(src: Path, case: str, dst: Path, new_id: str) -> Path:
    """Copy phantom ``case`` to folder ``dst`` with its files renamed to ``new_id``; returns its T1c path."""
    dst.mkdir(parents=True)
    for suffix in SUFFIXES:
        shutil.copy(_file(src, case, suffix), dst / f"{new_id}_{suffix}.nii.gz")
    return dst / f"{new_id}_t1ce.nii.gz"


def test_duplicate_case_id_differing_in_letter_case_is_skipped(src: Path, tmp_path: Path) -> None:
    """``Phantom_001`` and ``phantom_001`` predict to the same file on a case-insensitive disk."""
    copy = _copy_case(src, "Phantom_001", src / "again" / "phantom_001", "phantom_001")
    out = tmp_path / "datalist.json"
    result = _run("prepare", "--src", src, "--out", out, "--all-test")
    assert result.returncode == 0, result.stderr
    (skip,) = _skips(result)
    first = _file(src, "Phantom_001", "t1ce")
    assert skip.startswith(f"SKIP phantom_001: {copy}: duplicate case id phantom_001"), skip
    assert f"found first at {first}, kept" in skip, skip
    assert _kept(out) == ["Phantom_000", "Phantom_001", "Phantom_002"]


def test_duplicate_of_a_bad_first_case_is_not_kept_instead(src: Path, tmp_path: Path) -> None:
    """The first case found with an id is the only one that can be kept: a good second copy does not silently
    take the place of a bad first one."""
    copy = _copy_case(src, "Phantom_001", src / "zz_copy", "Phantom_001")
    _file(src, "Phantom_001", "t2").write_text("broken")
    out = tmp_path / "datalist.json"
    result = _run("prepare", "--src", src, "--out", out, "--all-test")
    assert result.returncode == 0, result.stderr
    first, second = _skips(result)
    assert first.startswith(f"SKIP Phantom_001: {_file(src, 'Phantom_001', 't2')}: not a readable NIfTI"), first
    assert second.startswith(f"SKIP Phantom_001: {copy}: duplicate case id Phantom_001"), second
    assert f"found first at {_file(src, 'Phantom_001', 't1ce')}, skipped" in second, second
    assert _kept(out) == ["Phantom_000", "Phantom_002"]


# 4. a failed command ends with one line naming the file or option and the problem


def test_prepare_missing_src(tmp_path: Path) -> None:
    line = _last_error(_run("prepare", "--src", tmp_path / "nope", "--out", tmp_path / "d.json"))
    assert line == f"error: {tmp_path / 'nope'}: source folder (--src) does not exist"


def test_prepare_src_is_a_file(src: Path, tmp_path: Path) -> None:
    t1 = _file(src, "Phantom_000", "t1")
    line = _last_error(_run("prepare", "--src", t1, "--out", tmp_path / "d.json"))
    assert line == f"error: {t1}: --src is a file, not a folder of cases"


def test_prepare_no_cases_found(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no scans here")
    line = _last_error(_run("prepare", "--src", tmp_path / "empty", "--out", tmp_path / "d.json"))
    assert line.startswith(f"error: no usable case under {tmp_path / 'empty'}: no case of a known layout found")
    assert not (tmp_path / "d.json").exists()


def test_prepare_all_cases_bad(src: Path, tmp_path: Path) -> None:
    for case in ("Phantom_000", "Phantom_001", "Phantom_002"):
        _file(src, case, "t1").write_text("broken")
    line = _last_error(_run("prepare", "--src", src, "--out", tmp_path / "d.json"))
    assert line.startswith(f"error: no usable case under {src}: all 3 cases were skipped"), line


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "not found"),
        ("case,patient\na,b\n", "header must name case_id, patient_id"),
        ("case_id,patient_id\nPhantom_000,P1\nPhantom_000,P2\n", "line 3: case Phantom_000 mapped to both P1 and P2"),
        (b"\xff\xfe\x00\x01binary", "cannot be read as UTF-8 CSV"),
    ],
)
def test_prepare_bad_patients_csv(src: Path, tmp_path: Path, content: str | bytes | None, problem: str) -> None:
    csv = tmp_path / "patients.csv"
    if isinstance(content, bytes):
        csv.write_bytes(content)
    elif content is not None:
        csv.write_text(content)
    line = _last_error(_run("prepare", "--src", src, "--out", tmp_path / "d.json", "--patients", csv))
    assert line.startswith(f"error: patient CSV {csv}") and problem in line, line


def test_prepare_bad_fractions(src: Path, tmp_path: Path) -> None:
    line = _last_error(_run("prepare", "--src", src, "--out", tmp_path / "d.json", "--val", "0.7", "--test", "0.5"))
    assert line.startswith("error: --val/--test: fractions must be"), line


def test_prepare_out_is_a_folder(src: Path, tmp_path: Path) -> None:
    (tmp_path / "d.json").mkdir()
    line = _last_error(_run("prepare", "--src", src, "--out", tmp_path / "d.json"))
    assert line.startswith(f"error: {tmp_path / 'd.json'}: --out is a folder"), line


def test_prepare_out_below_a_file(src: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "sub" / "d.json"
    line = _last_error(_run("prepare", "--src", src, "--out", out))
    assert line == f"error: {out}: --out lies below {tmp_path / 'file'}, which is a file, not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_prepare_unwritable_out_folder(src: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        line = _last_error(_run("prepare", "--src", src, "--out", folder / "d.json"))
    finally:
        folder.chmod(0o700)
    assert line == f"error: {folder / 'd.json'}: --out folder {folder} is not writable"


def test_prepare_missing_option() -> None:
    result = _run("prepare", "--out", "d.json")
    assert result.returncode == 2 and "error: the following arguments are required: --src" in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith("--src")


# 5. a full disk leaves the old datalist as it was


def test_full_disk_keeps_the_old_datalist(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "datalist.json"
    assert main(["--src", str(src), "--out", str(out), "--all-test"]) == 0
    old = out.read_bytes()
    limit = 256  # bytes: far smaller than the new datalist (about 2 KB)
    result = _run("prepare", "--src", src, "--out", out, "--seed", "7", fsize=limit)
    line = _last_error(result)
    assert line.startswith(f"error: {out}: cannot write the datalist"), line
    assert out.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp_")] == []
    assert _temporaries(tmp_path) == []


# 6. synthetic writes over no file it did not write


def test_synthetic_refuses_a_folder_with_other_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("my study")
    line = _last_error(_run("synthetic", "--out", data, "--cases", "2", "--size", *SIZE))
    assert line.startswith(f"error: {data}: holds 1 entry not written by data_prep.synthetic"), line
    assert sorted(p.name for p in data.iterdir()) == ["notes.txt"]


def test_synthetic_refuses_real_cases_with_phantom_names(tmp_path: Path) -> None:
    real = tmp_path / "data" / "Phantom_000"
    real.mkdir(parents=True)
    scan = real / "Phantom_000_t1.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.float32), np.eye(4)), scan)
    before = scan.read_bytes()
    _last_error(_run("synthetic", "--out", tmp_path / "data", "--cases", "2", "--size", *SIZE))
    assert scan.read_bytes() == before and sorted(p.name for p in real.iterdir()) == [scan.name]


def test_synthetic_refuses_a_file_not_in_its_manifest(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert _run("synthetic", "--out", data, "--cases", "1", "--size", *SIZE).returncode == 0
    foreign = data / "Phantom_001" / "Phantom_001_t2.nii.gz"
    foreign.parent.mkdir()
    foreign.write_bytes(b"someone else's scan")
    line = _last_error(_run("synthetic", "--out", data, "--cases", "2", "--size", *SIZE))
    assert line.startswith(f"error: {foreign}: not written by data_prep.synthetic"), line
    assert foreign.read_bytes() == b"someone else's scan"
    assert not (data / "Phantom_001" / "Phantom_001_t1.nii.gz").exists()


def test_synthetic_refuses_other_settings_in_its_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert _run("synthetic", "--out", data, "--cases", "1", "--size", *SIZE).returncode == 0
    before = _snapshot(data)
    line = _last_error(_run("synthetic", "--out", data, "--cases", "1", "--size", *SIZE, "--seed", "3"))
    assert line.startswith(f"error: {data}: holds phantoms of seed 0, size 32x32x16, not of seed 3"), line
    assert _snapshot(data) == before


def test_synthetic_reruns_into_its_own_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert _run("synthetic", "--out", data, "--cases", "2", "--size", *SIZE).returncode == 0
    prepare_datalist(data, data / "datalist.json")  # the README's next step writes beside the phantoms
    before = _snapshot(data)
    again = _run("synthetic", "--out", data, "--cases", "2", "--size", *SIZE)
    assert again.returncode == 0, again.stderr
    assert _snapshot(data) == before  # same arguments, same bytes; the datalist untouched
    more = _run("synthetic", "--out", data, "--cases", "3", "--size", *SIZE)
    assert more.returncode == 0, more.stderr
    manifest = json.loads((data / MANIFEST).read_text())
    assert manifest["cases"] == 3 and len(manifest["files"]) == 15 and _temporaries(data) == []


def test_synthetic_full_disk_keeps_old_phantoms(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert _run("synthetic", "--out", data, "--cases", "2", "--size", *SIZE).returncode == 0
    before = _snapshot(data)
    limit = len(before["Phantom_000/Phantom_000_t1ce.nii.gz"]) // 2  # the manifest (1 KB) is rewritten first
    line = _last_error(_run("synthetic", "--out", data, "--cases", "2", "--size", *SIZE, fsize=limit))
    assert line.startswith(f"error: {data / 'Phantom_000' / 'Phantom_000_t1ce.nii.gz'}: cannot write"), line
    assert _snapshot(data) == before and _temporaries(data) == []


def test_synthetic_out_is_a_file_or_below_one(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    line = _last_error(_run("synthetic", "--out", tmp_path / "file", "--cases", "1", "--size", *SIZE))
    assert line == f"error: {tmp_path / 'file'}: exists and is not a folder; no phantom written"
    below = tmp_path / "file" / "data"
    line = _last_error(_run("synthetic", "--out", below, "--cases", "1", "--size", *SIZE))
    assert line.startswith("error: ") and str(tmp_path / "file") in line, line
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize("args, option", [(["--cases", "0"], "--cases"), (["--size", "32", "0", "16"], "--size")])
def test_synthetic_bad_numbers(tmp_path: Path, args: list[str], option: str) -> None:
    result = _run("synthetic", "--out", tmp_path / "data", *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"python -m data_prep.synthetic: error: {option}:")
    assert not (tmp_path / "data").exists()
