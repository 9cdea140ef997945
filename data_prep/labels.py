"""Label conventions and their mapping to BraTS 2018-2021 labels.

Every datalist written by :mod:`data_prep.prepare` points at label maps with BraTS labels
``0`` background, ``1`` NCR/NET, ``2`` ED, ``4`` ET, which is what MONAI's
``ConvertToMultiChannelBasedOnBratsClassesd`` expects (TC = 1|4, WT = 1|2|4, ET = 4).
"""

from __future__ import annotations

import numpy as np

from custom_modules.constants import BRATS_LABELS

__all__ = ["BRATS_LABELS", "LABEL_CONVENTIONS", "remap_labels"]

#: source label value -> BraTS label value, per convention.
LABEL_CONVENTIONS: dict[str, dict[int, int]] = {
    "brats": {0: 0, 1: 1, 2: 2, 4: 4},  # BraTS 2018-2021, UPENN-GBM, BrainLes fusion
    "brats2023": {0: 0, 1: 1, 2: 2, 3: 4},  # BraTS 2023: 3 = ET
    "msd": {0: 0, 1: 2, 2: 1, 3: 4},  # MSD Task01: 1 = edema, 2 = non-enhancing, 3 = enhancing
}


def remap_labels(array: np.ndarray, convention: str) -> np.ndarray:
    """Map a label map of ``convention`` to BraTS labels 0/1/2/4.

    Args:
        array: integer-valued label map of any shape (integral floats are accepted).
        convention: a key of :data:`LABEL_CONVENTIONS`.

    Returns:
        uint8 array of the same shape.

    Raises:
        ValueError: unknown convention or values outside the convention's label set.
    """
    if convention not in LABEL_CONVENTIONS:
        raise ValueError(f"unknown label convention {convention!r}, expected one of {sorted(LABEL_CONVENTIONS)}")
    mapping = LABEL_CONVENTIONS[convention]
    array = np.asarray(array)
    bad = np.setdiff1d(np.unique(array), list(mapping))
    if bad.size:
        raise ValueError(f"label values {bad.tolist()} are not in the {convention} set {sorted(mapping)}")
    lut = np.zeros(max(mapping) + 1, dtype=np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut[array.astype(np.intp)]
