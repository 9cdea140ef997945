"""Segmenting one case without a datalist: the bundle key ``case_images`` and ``python -m raagr2_tools.jobs.segment``
(a case folder or its files) write the same label map as ``run inference`` on a datalist."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from custom_modules.data import DatalistError, case_id_from_files, inference_cases
from raagr2_tools.jobs.bundle_cli import run_bundle
from raagr2_tools.jobs.segment import main as segment_main


def test_case_id_is_the_shared_prefix_of_the_file_names() -> None:
    assert case_id_from_files(["/d/P1_t1c.nii.gz", "/d/P1_t1.nii.gz", "/d/P1_t2.nii.gz", "/d/P1_flair.nii.gz"]) == "P1"
    assert case_id_from_files(["/d/BraTS-GLI-00001-000-t1c.nii.gz", "/d/BraTS-GLI-00001-000-t2f.nii"]) == (
        "BraTS-GLI-00001-000"
    )
    assert case_id_from_files(["/d/case4d.nii.gz"]) == "case4d"
    assert case_id_from_files(["/d/a.nii.gz", "/d/b.nii.gz"]) == "a"


def test_case_images_are_checked(tmp_path: Path) -> None:
    files = [tmp_path / f"P_{m}.nii.gz" for m in ("t1c", "t1", "t2", "flair")]
    for f in files[:3]:
        f.write_bytes(b"")
    with pytest.raises(DatalistError, match="case_images: 2 file"):
        inference_cases(files[:2], "unused.json", "test", tmp_path)
    with pytest.raises(DatalistError, match=r"case_images: .*P_flair.nii.gz not found"):
        inference_cases(files, "unused.json", "test", tmp_path)
    files[3].write_bytes(b"")
    (entry,) = inference_cases([f.name for f in files], "unused.json", "test", tmp_path)
    assert entry == {"case_id": "P", "image": [str(f) for f in files]}
    (named,) = inference_cases([str(files[0])], "unused.json", "test", tmp_path, case_id="mine")
    assert named == {"case_id": "mine", "image": str(files[0])}


@pytest.mark.e2e
def test_a_case_folder_or_its_files_give_the_datalist_runs_map(
    deploy_bundles: dict[str, Path], phantom_dataset: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    bundle = deploy_bundles["raagr2_baseline"]
    dataset_dir, datalist = phantom_dataset
    entry = json.loads(datalist.read_text())["test"][0]
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"test": [entry]}))
    run_bundle(
        [bundle / "configs" / "inference.json"],
        "inference",
        {"bundle_root": bundle, "dataset_dir": dataset_dir, "data_list_file_path": one, "output_dir": tmp_path / "ref"},
    )
    expected_name = f"{entry['case_id']}_pred.nii.gz"
    reference = nib.load(tmp_path / "ref" / expected_name)
    files = [str(dataset_dir / p) for p in entry["image"]]
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    for f in [*files, str(dataset_dir / entry["label"])]:
        (case_dir / Path(f).name).symlink_to(f)
    runs = {
        "files": [str(bundle), *files, "--output_dir", str(tmp_path / "files"), "--case_id", entry["case_id"]],
        "folder": [str(bundle), str(case_dir), "--output_dir", str(tmp_path / "folder")],
    }
    for how, argv in runs.items():
        assert segment_main(argv) == 0, how
        assert capsys.readouterr().out.strip().endswith(str(tmp_path / how))
        written = nib.load(tmp_path / how / expected_name)
        np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(reference.dataobj), err_msg=how)
        np.testing.assert_allclose(written.affine, reference.affine)
    assert segment_main([str(bundle), str(case_dir), files[0], "--output_dir", str(tmp_path / "x")]) == 1
    assert "give one case folder, or the files of one case, not both" in capsys.readouterr().err
