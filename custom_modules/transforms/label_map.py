"""Binary region channels (TC, WT, ET) back to a BraTS label map (0 background, 1 NCR/NET, 2 ED, 4 ET)."""

from __future__ import annotations

import torch

from ..constants import LABEL_PAINT_ORDER


def regions_to_brats_labels(regions: torch.Tensor, tc: int = 0, wt: int = 1, et: int = 2) -> torch.Tensor:
    """``(3, *spatial)`` binary regions -> ``(1, *spatial)`` uint8 BraTS labels.

    Painted in :data:`~custom_modules.constants.LABEL_PAINT_ORDER`: ET -> 4 wins over TC, TC without ET -> 1
    (NCR/NET), WT without TC -> 2 (edema). ``tc``, ``wt``, ``et`` are the regions' channels in ``regions``.
    """
    channels = {"tc": tc, "wt": wt, "et": et}
    on = regions > 0
    labels = torch.zeros_like(regions[:1], dtype=torch.uint8)
    for region, value in LABEL_PAINT_ORDER:
        labels[on[[channels[region]]]] = value
    return labels
