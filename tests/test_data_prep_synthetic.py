"""Synthetic BraTS-like phantoms: shapes, labels, determinism, contrast, and prepare on their output."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np

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


def test_modality_contrast() -> None:
    """BraTS-like contrast on average (median over 12 cases of each region's mean / healthy brain mean), varying
    per case: edema bright on FLAIR and T2, tumour slightly dark on T1, NCR darkish on T1c (partial volume with
    the ET rim brightens small cores) and bright on T2, ET bright on T1c and brighter than NCR; edema brighter
    than healthy brain on FLAIR in every case."""
    ratios: dict[str, list[float]] = {}
    for i in range(12):
        modalities, label = _case(i)
        brain = modalities["flair"] != 0
        healthy = brain & (label == 0)

        def mean(name: str, *labels: int) -> float:
            return float(modalities[name][np.isin(label, labels) & brain].mean())

        def ratio(key: str, name: str, *labels: int, over: tuple[int, ...] = ()) -> None:
            base = mean(name, *over) if over else float(modalities[name][healthy].mean())
            ratios.setdefault(key, []).append(mean(name, *labels) / base)

        ratio("flair edema", "flair", 2)
        ratio("t2 edema", "t2", 2)
        ratio("t1 tumour", "t1", 1, 2, 4)
        if (label == 1).any():
            ratio("t1c ncr", "t1c", 1)
            ratio("t2 ncr", "t2", 1)
        if (label == 4).any():
            ratio("t1c et", "t1c", 4)
        if (label == 1).any() and (label == 4).any():
            ratio("t1c et/ncr", "t1c", 4, over=(1,))
    assert min(ratios["flair edema"]) > 1.05, ratios
    median = {k: float(np.median(v)) for k, v in ratios.items()}
    assert median["flair edema"] > 1.2 and median["t2 edema"] > 1.1 and median["t1 tumour"] < 0.95, median
    assert median["t1c ncr"] < 0.9 and median["t2 ncr"] > 1.2, median
    assert median["t1c et"] > 1.15 and median["t1c et/ncr"] > 1.2, median


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


def _best_threshold_dice(image: np.ndarray, target: np.ndarray, brain: np.ndarray) -> float:
    """The best Dice of ``target`` by any one threshold of ``image`` (either side) within ``brain``."""
    values, truth = image[brain], target[brain]
    order = np.argsort(values, kind="stable")
    truth = truth[order].astype(np.float64)
    n, positives = truth.size, truth.sum()
    # predicting "above the k-th smallest value" (k = 0..n) or "below it"
    tp_above = positives - np.concatenate([[0.0], np.cumsum(truth)])
    size_above = n - np.arange(n + 1, dtype=np.float64)
    above = 2 * tp_above / np.maximum(size_above + positives, 1)
    below = 2 * (positives - tp_above) / np.maximum(n - size_above + positives, 1)
    return float(max(above.max(), below.max()))


def test_whole_tumour_not_separable_by_one_threshold() -> None:
    """Over 10 phantoms, the best threshold of any one modality (chosen per case, an oracle) segments the whole
    tumour with mean Dice < 0.9: texture, bias and overlapping contrasts make the task need a network."""
    scores = []
    for i in range(10):
        modalities, label = _case(i, shape=(64, 64, 32))
        brain = modalities["flair"] != 0
        whole = label > 0
        scores.append(max(_best_threshold_dice(modalities[m], whole, brain) for m in MODALITY_ORDER))
    assert np.mean(scores) < 0.9, scores


def test_sub_region_intensities_overlap() -> None:
    """Pooled over 10 phantoms (each normalised by its healthy-brain median), the central 90% intensity ranges of
    edema and healthy brain overlap on every modality, those of NCR and ET on T1, T2 and FLAIR; on T1c the
    ET/NCR contrast varies from case to case."""
    pooled: dict[str, dict[int, list[np.ndarray]]] = {m: {0: [], 1: [], 2: [], 4: []} for m in MODALITY_ORDER}
    et_over_ncr = []
    for i in range(10):
        modalities, label = _case(i, shape=(64, 64, 32))
        brain = modalities["flair"] != 0
        for m in MODALITY_ORDER:
            image = modalities[m] / np.median(modalities[m][brain & (label == 0)])
            for value in (0, 1, 2, 4):
                pooled[m][value].append(image[brain & (label == value)])
        if (label == 1).sum() >= 20 and (label == 4).sum() >= 20:
            t1c = modalities["t1c"]
            et_over_ncr.append(float(np.median(t1c[label == 4]) / np.median(t1c[label == 1])))

    def overlap(m: str, a: int, b: int) -> float:
        x, y = np.concatenate(pooled[m][a]), np.concatenate(pooled[m][b])
        lo = max(np.percentile(x, 5), np.percentile(y, 5))
        hi = min(np.percentile(x, 95), np.percentile(y, 95))
        return float(hi - lo)

    for m in MODALITY_ORDER:
        assert overlap(m, 0, 2) > 0, m  # edema vs healthy tissue
    for m in ("t1", "t2", "flair"):
        assert overlap(m, 1, 4) > 0, m  # necrosis vs enhancing tumour
    assert len(et_over_ncr) >= 3 and max(et_over_ncr) > 1.25 * min(et_over_ncr), et_over_ncr
