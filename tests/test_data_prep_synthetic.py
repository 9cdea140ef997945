"""Synthetic BraTS-like phantoms: shapes, labels, determinism, contrast, and prepare on their output."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from custom_modules.constants import MODALITY_ORDER
from data_prep.prepare import prepare_datalist
from data_prep.synthetic import main, make_phantom_case, write_phantom_dataset

SHAPE = (48, 48, 24)


def _case(i: int, seed: int = 0, shape=SHAPE):
    return make_phantom_case(shape, np.random.default_rng([seed, i]))


def test_shape_dtype_labels() -> None:
    present = set()
    for i in range(6):
        modalities, label = _case(i)
        assert tuple(modalities) == MODALITY_ORDER
        assert all(m.shape == SHAPE and m.dtype == np.float32 for m in modalities.values())
        assert label.shape == SHAPE and label.dtype == np.uint8
        values = set(np.unique(label).tolist())
        assert values <= {0, 1, 2, 4} and 2 in values
        present |= values
        brain = modalities["flair"] != 0
        assert not brain[0, 0, 0] and brain[SHAPE[0] // 2, SHAPE[1] // 2, SHAPE[2] // 2]
        assert not (label[~brain]).any()  # tumour inside the brain, background 0
    assert present == {0, 1, 2, 4}


def test_small_sizes_and_speed() -> None:
    for shape in [(16, 16, 8), (64, 64, 32), (96, 96, 48)]:
        start = time.perf_counter()
        modalities, label = _case(0, shape=shape)
        assert time.perf_counter() - start < 2.0  # < 1 s on a laptop; CI margin
        assert label.shape == shape and label.any()


def test_deterministic(tmp_path: Path) -> None:
    a, b, c = _case(0, seed=3), _case(0, seed=3), _case(0, seed=4)
    np.testing.assert_array_equal(a[1], b[1])
    for m in MODALITY_ORDER:
        np.testing.assert_array_equal(a[0][m], b[0][m])
    assert not np.array_equal(a[0]["flair"], c[0]["flair"])
    one = write_phantom_dataset(tmp_path / "a", 2, seed=5, shape=(16, 16, 8))
    two = write_phantom_dataset(tmp_path / "b", 2, seed=5, shape=(16, 16, 8))
    for x, y in zip(one, two):
        for f in sorted(x.iterdir()):
            np.testing.assert_array_equal(nib.load(f).get_fdata(), nib.load(y / f.name).get_fdata())


@pytest.mark.parametrize("i", range(6))
def test_modality_contrast(i: int) -> None:
    modalities, label = _case(i)
    brain = modalities["flair"] != 0
    healthy = brain & (label == 0)

    def mean(name: str, *labels: int) -> float:
        return float(modalities[name][np.isin(label, labels) & brain].mean())

    def base(name: str) -> float:
        return float(modalities[name][healthy].mean())

    assert mean("flair", 2) > 1.5 * base("flair")  # bright edema on FLAIR
    assert mean("flair", 1, 2, 4) > base("flair")
    assert mean("t2", 2) > 1.5 * base("t2")  # bright edema on T2
    assert mean("t1", 1, 2, 4) < base("t1")  # slightly dark tumour on T1
    if (label == 1).any():
        assert mean("t1c", 1) < 0.6 * base("t1c")  # dark necrotic core on T1c
        assert mean("t2", 1) > 1.5 * base("t2")
    if (label == 4).any():
        assert mean("t1c", 4) > 1.5 * base("t1c")  # bright enhancing ring


def test_cli_output_passes_prepare(tmp_path: Path, capsys) -> None:
    assert main(["--out", str(tmp_path / "ph"), "--cases", "3", "--seed", "0", "--size", "16", "16", "8"]) == 0
    assert "wrote 3 phantom cases" in capsys.readouterr().out
    names = sorted(p.name for p in (tmp_path / "ph" / "Phantom_000").iterdir())
    assert names == [f"Phantom_000_{s}.nii.gz" for s in ("flair", "seg", "t1", "t1ce", "t2")]
    seg = nib.load(tmp_path / "ph" / "Phantom_000" / "Phantom_000_seg.nii.gz")
    assert seg.get_data_dtype() == np.uint8 and np.allclose(seg.affine, np.eye(4))
    datalist = prepare_datalist(tmp_path / "ph", tmp_path / "ph" / "datalist.json")
    assert [len(datalist[k]) for k in ("training", "validation", "test")] == [1, 1, 1]
    assert {e["layout"] for k in ("training", "validation", "test") for e in datalist[k]} == {"brats2021"}
