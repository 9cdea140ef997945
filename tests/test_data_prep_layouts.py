"""Layout detection, modality order, label conversion and split of data_prep.prepare."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data_prep.labels import remap_labels
from data_prep.layouts import MODALITY_ORDER, find_cases
from data_prep.prepare import prepare_datalist
from data_prep.split import split_by_patient
from data_prep.synthetic import write_phantom_dataset

SHAPE = (16, 16, 8)
CODE = {"t1c": 1.0, "t1": 2.0, "t2": 3.0, "flair": 4.0}  # each modality file is filled with its code
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tcga_lgg_brainles"


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)


def _label(values: tuple[int, ...]) -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    label.flat[: len(values)] = values
    return label


def _write_3d(folder: Path, stem: str, suffixes: dict[str, str], sep: str, label: Path, values) -> None:
    for modality, suffix in suffixes.items():
        _save(folder / f"{stem}{sep}{suffix}.nii.gz", np.full(SHAPE, CODE[modality], np.float32))
    _save(label, _label(values))


def write_brats2021(root: Path) -> str:
    cid = "BraTS2021_00001"
    sfx = {"t1c": "t1ce", "t1": "t1", "t2": "t2", "flair": "flair"}
    _write_3d(root / cid, cid, sfx, "_", root / cid / f"{cid}_seg.nii.gz", (0, 1, 2, 4))
    return cid


def write_brats2023(root: Path) -> str:
    cid = "BraTS-GLI-00002-000"
    sfx = {"t1c": "t1c", "t1": "t1n", "t2": "t2w", "flair": "t2f"}
    _write_3d(root / cid, cid, sfx, "-", root / cid / f"{cid}-seg.nii.gz", (0, 1, 2, 3))
    return cid


def write_upenn(root: Path) -> str:
    cid = "UPENN-GBM-00003_11"
    sfx = {"t1c": "T1GD", "t1": "T1", "t2": "T2", "flair": "FLAIR"}
    label = root / "images_segm" / f"{cid}_segm.nii.gz"  # label in another folder
    _write_3d(root / "images_structural" / cid, cid, sfx, "_", label, (0, 1, 2, 4))
    return cid


def write_brainles(root: Path) -> str:
    cid = "TCGA-XX-0004"
    sfx = {"t1c": "t1c_bet", "t1": "t1_bet", "t2": "t2_bet", "flair": "fla_bet"}
    base = root / cid / f"{cid}_brainles"
    _write_3d(base / "raw_bet", cid, sfx, "_", base / "fusion" / "simple.nii.gz", (0, 1, 2, 4))
    return cid


def write_msd(root: Path) -> str:
    task = root / "Task01_BrainTumour"
    image = np.stack([np.full(SHAPE, CODE[m], np.float32) for m in ("flair", "t1", "t1c", "t2")], -1)
    _save(task / "imagesTr" / "BRATS_005.nii.gz", image)
    _save(task / "labelsTr" / "BRATS_005.nii.gz", _label((0, 1, 2, 3)))
    (task / "imagesTr" / "._BRATS_005.nii.gz").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (task / "dataset.json").write_text("{}")
    return "BRATS_005"


WRITERS = {
    "brats2021": (write_brats2021, {0: 0, 1: 1, 2: 2, 4: 4}),
    "brats2023": (write_brats2023, {0: 0, 1: 1, 2: 2, 3: 4}),
    "upenn_gbm": (write_upenn, {0: 0, 1: 1, 2: 2, 4: 4}),
    "brainles": (write_brainles, {0: 0, 1: 1, 2: 2, 4: 4}),
    "msd": (write_msd, {0: 0, 1: 2, 2: 1, 3: 4}),
}


def _load(datalist: dict, rel: str) -> np.ndarray:
    return np.asanyarray(nib.load(Path(datalist["dataset_dir"]) / rel).dataobj)


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_layout_found_with_modality_order_and_brats_labels(tmp_path: Path, layout: str) -> None:
    writer, mapping = WRITERS[layout]
    src = tmp_path / "src"
    cid = writer(src)
    datalist = prepare_datalist(src, tmp_path / "out" / "datalist.json", all_test=True)
    (entry,) = datalist["test"]
    assert (entry["case_id"], entry["layout"]) == (cid, layout)
    if layout == "msd":  # re-ordered 4D copy, channels last
        assert isinstance(entry["image"], str) and Path(entry["image"]).is_absolute()
        image = _load(datalist, entry["image"])
        assert image.shape == (*SHAPE, 4)
        assert [float(image[0, 0, 0, k]) for k in range(4)] == [CODE[m] for m in MODALITY_ORDER]
    else:
        assert len(entry["image"]) == 4 and not any(Path(p).is_absolute() for p in entry["image"])
        assert [float(_load(datalist, p)[0, 0, 0]) for p in entry["image"]] == [CODE[m] for m in MODALITY_ORDER]
    label = _load(datalist, entry["label"])
    expected = _label(tuple(mapping.values()))
    np.testing.assert_array_equal(label, expected)
    assert set(np.unique(label).tolist()) <= {0, 1, 2, 4}
    if layout in ("msd", "brats2023"):  # converted copy next to the datalist, uint8, same affine
        assert Path(entry["label"]) == tmp_path / "out" / "labels" / f"{cid}_seg.nii.gz"
        img = nib.load(entry["label"])
        assert img.get_data_dtype() == np.uint8 and np.allclose(img.affine, np.eye(4))


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_unlabelled_case_kept_only_with_all_test(tmp_path: Path, caplog, layout: str) -> None:
    src = tmp_path / "src"
    cid = WRITERS[layout][0](src)
    (case,) = find_cases(src)
    case.label.unlink()
    (case,) = find_cases(src)  # still found, once, with the expected label path
    assert (case.case_id, case.layout) == (cid, layout) and not case.label.exists()
    caplog.set_level("INFO", logger="data_prep")
    datalist = prepare_datalist(src, tmp_path / "out" / "datalist.json", all_test=True)
    (entry,) = datalist["test"]
    assert (entry["case_id"], entry["layout"]) == (cid, layout) and "label" not in entry
    assert "SKIP" not in caplog.text and "kept 1 (1 without label: test only), skipped 0" in caplog.text
    assert not (tmp_path / "out" / "labels").exists()
    caplog.clear()
    with pytest.raises(RuntimeError, match="no usable case"):
        prepare_datalist(src, tmp_path / "out" / "datalist.json")
    assert f"SKIP {cid}: {case.label}: missing label (file not found)" in caplog.text


def test_all_layouts_together_no_cross_detection(tmp_path: Path) -> None:
    expected = {(writer(tmp_path), name) for name, (writer, _) in WRITERS.items()}
    assert {(c.case_id, c.layout) for c in find_cases(tmp_path)} == expected


def test_msd_and_brats_entries_load_with_monai(tmp_path: Path) -> None:
    from monai.data import load_decathlon_datalist
    from monai.transforms import Compose, ConvertToMultiChannelBasedOnBratsClassesd, EnsureChannelFirstd, LoadImaged

    write_msd(tmp_path / "src")
    write_brats2021(tmp_path / "src")
    out = tmp_path / "datalist.json"
    datalist = prepare_datalist(tmp_path / "src", out, all_test=True)
    items = load_decathlon_datalist(out, data_list_key="test", base_dir=datalist["dataset_dir"])
    load = Compose(
        [
            LoadImaged(keys=["image", "label"]),
            EnsureChannelFirstd(keys=["image", "label"]),
            ConvertToMultiChannelBasedOnBratsClassesd(keys="label"),
        ]
    )
    for item in items:
        data = load(item)
        assert tuple(data["image"].shape) == (4, *SHAPE) and tuple(data["label"].shape) == (3, *SHAPE)
        assert data["image"][:, 0, 0, 0].tolist() == [CODE[m] for m in MODALITY_ORDER]
        assert data["label"][2].sum() == 1  # ET voxel: label 3 (MSD) and 4 (BraTS) both became 4


def test_remap_labels() -> None:
    np.testing.assert_array_equal(remap_labels(np.array([0, 1, 2, 3]), "msd"), [0, 2, 1, 4])
    np.testing.assert_array_equal(remap_labels(np.array([0.0, 1.0, 2.0, 3.0]), "brats2023"), [0, 1, 2, 4])
    assert remap_labels(np.array([4]), "brats").dtype == np.uint8
    with pytest.raises(ValueError, match="not in the msd set"):
        remap_labels(np.array([4]), "msd")


def _splits(datalist: dict) -> dict[str, list[str]]:
    return {k: [e["case_id"] for e in datalist[k]] for k in ("training", "validation", "test")}


def test_split_by_patient_deterministic(tmp_path: Path) -> None:
    write_phantom_dataset(tmp_path / "src", 10, seed=0, shape=SHAPE)
    a = _splits(prepare_datalist(tmp_path / "src", tmp_path / "a.json", seed=0))
    b = _splits(prepare_datalist(tmp_path / "src", tmp_path / "b.json", seed=0))
    c = _splits(prepare_datalist(tmp_path / "src", tmp_path / "c.json", seed=1))
    assert a == b and a != c
    assert json.loads((tmp_path / "a.json").read_text())["seed"] == 0
    for split in (a, c):
        ids = [cid for part in split.values() for cid in part]
        assert len(ids) == len(set(ids)) == 10  # no patient in two lists
        assert [len(split[k]) for k in ("training", "validation", "test")] == [6, 2, 2]


@pytest.mark.parametrize(
    "n, expected", [(1, (0, 0, 1)), (2, (1, 0, 1)), (3, (1, 1, 1)), (4, (2, 1, 1)), (20, (14, 3, 3))]
)
def test_split_sizes_small(n: int, expected: tuple[int, int, int]) -> None:
    split = split_by_patient({f"c{i}": f"c{i}" for i in range(n)}, 0.15, 0.15, seed=0)
    assert tuple(len(split[k]) for k in ("training", "validation", "test")) == expected
    assert split_by_patient({"b": "b", "a": "a"}, all_test=True) == {
        "training": [],
        "validation": [],
        "test": ["a", "b"],
    }


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared TCGA-LGG BrainLes data not present")
def test_real_brainles_cases(tmp_path: Path) -> None:
    datalist = prepare_datalist(SHARED_DATA, tmp_path / "real.json", all_test=True)
    assert _splits(datalist) == {"training": [], "validation": [], "test": ["OtherEXampleFromTCIA", "TCGA-DU-7294"]}
    for entry in datalist["test"]:
        assert entry["layout"] == "brainles"
        assert [Path(p).name.split("_")[-2] for p in entry["image"]] == ["t1c", "t1", "t2", "fla"]
        assert entry["label"].endswith("fusion/simple.nii.gz")
    assert not (tmp_path / "labels").exists()  # BraTS labels are used in place


def test_variants_underscore_nii_upenn_preference_duplicates(tmp_path: Path, caplog) -> None:
    src = tmp_path / "src"
    sfx = {"t1c": "t1c", "t1": "t1n", "t2": "t2w", "flair": "t2f"}
    for modality, suffix in sfx.items():  # BraTS 2023 with "_" and uncompressed .nii
        _save(src / "b23" / f"BraTS-MEN-00001-000_{suffix}.nii", np.full(SHAPE, CODE[modality], np.float32))
    _save(src / "b23" / "BraTS-MEN-00001-000_seg.nii", _label((0, 3)))
    cid = write_upenn(src)  # manual _segm preferred over the automated one
    _save(src / "automated_segm" / f"{cid}_automated_approx_segm.nii.gz", _label((0, 1)))
    write_brats2021(src)
    write_brats2021(src / "copy")  # same case id twice: the second copy is skipped
    caplog.set_level("INFO", logger="data_prep")
    out = src / "datalist.json"  # output inside src: generated labels/ must not be found again
    for _ in range(2):
        datalist = prepare_datalist(src, out, all_test=True)
    entries = {e["case_id"]: e for e in datalist["test"]}
    assert sorted(entries) == ["BraTS-MEN-00001-000", "BraTS2021_00001", cid]
    assert entries["BraTS-MEN-00001-000"]["label"] == "labels/BraTS-MEN-00001-000_seg.nii.gz"
    assert _load(datalist, entries["BraTS-MEN-00001-000"]["label"]).flat[1] == 4
    assert entries[cid]["label"] == f"images_segm/{cid}_segm.nii.gz"
    assert "SKIP BraTS2021_00001:" in caplog.text and "duplicate case id" in caplog.text
