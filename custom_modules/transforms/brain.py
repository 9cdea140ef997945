"""The brain mask of a skull-stripped image: where training draws its negative (tumour-free) slices."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform


class BrainMaskd(MapTransform):
    """Write ``data[mask_key]``: ``(1, *spatial)`` uint8, 1 where any channel of ``data[key]`` is non-zero.

    Skull-stripped BraTS images are exactly 0 outside the brain, and ``NormalizeIntensityd(nonzero=True)``
    keeps them 0, so this is the brain before or after normalisation. Given to ``RandCropByPosNegLabeld`` as
    ``image_key`` (``image_threshold=0``) it makes the negative samples brain without tumour, never air.
    """

    def __init__(self, keys: KeysCollection, mask_key: str = "brain", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            mask = (torch.as_tensor(image) != 0).any(dim=0, keepdim=True).to(torch.uint8)
            if hasattr(image, "copy_meta_from"):
                mask = type(image)(mask, meta=image.meta)
            d[self.mask_key] = mask
        return d
