"""Binary region channels (TC, WT, ET) back to a BraTS label map (0 background, 1 NCR/NET, 2 ED, 4 ET)."""

from __future__ import annotations

import torch


def regions_to_brats_labels(regions: torch.Tensor, tc: int = 0, wt: int = 1, et: int = 2) -> torch.Tensor:
    """``(3, *spatial)`` binary regions -> ``(1, *spatial)`` uint8 BraTS labels.

    ET wins over TC, TC over WT: ET -> 4, TC without ET -> 1 (NCR/NET), WT without TC -> 2 (edema).
    """
    on = regions > 0
    labels = torch.zeros_like(regions[:1], dtype=torch.uint8)
    labels[on[[wt]]] = 2
    labels[on[[tc]]] = 1
    labels[on[[et]]] = 4
    return labels
