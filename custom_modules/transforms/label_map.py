"""Binary region channels (TC, WT, ET) back to a BraTS label map (0 background, 1 NCR/NET, 2 ED, 4 ET)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform


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


class RegionsToBraTSLabelsd(MapTransform):
    """Dictionary version of :func:`regions_to_brats_labels`; keeps MetaTensor metadata (affine, file name)."""

    def __init__(
        self, keys: KeysCollection, tc: int = 0, wt: int = 1, et: int = 2, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channels = {"tc": tc, "wt": wt, "et": et}

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            regions = d[key]
            labels = regions_to_brats_labels(torch.as_tensor(regions), **self.channels)
            if hasattr(regions, "copy_meta_from"):
                labels = type(regions)(labels, meta=regions.meta, applied_operations=regions.applied_operations)
            d[key] = labels
        return d
