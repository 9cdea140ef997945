"""Label-map post-processing that BraTS entries use, and the regions a BraTS evaluator reads back.

The bundles deliver a BraTS label map (0, 1 NCR/NET, 2 ED, 4 ET) built from the thresholded TC, WT, ET
channels (:func:`custom_modules.transforms.regions_to_brats_labels`). Scores are computed on that map, read
back as regions the way a BraTS evaluator does (WT = 1|2|4, TC = 1|4, ET = 4): the raw channels need not
nest (a TC voxel outside WT), the delivered map always does.

Options (all off by default; sizes in voxels, which are mm^3 on 1 mm isotropic BraTS data):

- ``keep_largest_component``: keep only the largest 26-connected tumour (WT) component;
- ``min_component_voxels``: drop tumour components smaller than this (the largest is always kept);
- ``et_min_voxels``: when the whole ET is smaller than this, relabel it NCR (label 1), as BraTS entries
  do to avoid the all-or-nothing ET score of cases without enhancing tumour.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses, MapTransform
from scipy import ndimage

from .label_map import regions_to_brats_labels

__all__ = [
    "LabelMapPostprocessing",
    "postprocess_label_map",
    "delivered_regions",
    "DeliveredLabelMapd",
    "DeliveredRegionsd",
]

#: 26-connectivity in 3D (8 in 2D): diagonal neighbours belong to one component
_FULL_CONNECTIVITY = {2: np.ones((3, 3)), 3: np.ones((3, 3, 3))}


@dataclass(frozen=True)
class LabelMapPostprocessing:
    """Options of :func:`postprocess_label_map` (see the module docstring)."""

    keep_largest_component: bool = False
    min_component_voxels: int = 0
    et_min_voxels: int = 0

    def __post_init__(self) -> None:
        if self.min_component_voxels < 0 or self.et_min_voxels < 0:
            raise ValueError(
                f"min_component_voxels and et_min_voxels must be >= 0, got {self.min_component_voxels}, "
                f"{self.et_min_voxels}"
            )

    @property
    def active(self) -> bool:
        return self.keep_largest_component or self.min_component_voxels > 0 or self.et_min_voxels > 0


def postprocess_label_map(labels: torch.Tensor, options: LabelMapPostprocessing) -> torch.Tensor:
    """``(1, *spatial)`` BraTS label map -> the same map after ``options`` (a new tensor; input unchanged)."""
    if not options.active:
        return labels
    out = labels.clone()
    array = out[0].cpu().numpy()
    if options.keep_largest_component or options.min_component_voxels > 0:
        components, n = ndimage.label(array > 0, structure=_FULL_CONNECTIVITY[array.ndim])
        if n > 1:
            sizes = np.bincount(components.ravel())[1:]
            keep = np.zeros(n + 1, bool)
            keep[1 + int(np.argmax(sizes))] = True
            if not options.keep_largest_component:
                keep[1:] |= sizes >= options.min_component_voxels
            array[~keep[components]] = 0
    if options.et_min_voxels > 0:
        et = array == 4
        if 0 < et.sum() < options.et_min_voxels:
            array[et] = 1
    out[0] = torch.from_numpy(array).to(out.device)
    return out


def delivered_regions(
    channels: torch.Tensor, options: LabelMapPostprocessing = LabelMapPostprocessing()
) -> torch.Tensor:
    """Binary ``(3, *spatial)`` TC/WT/ET channels -> ``(3, *spatial)`` bool regions of the delivered label map."""
    labels = postprocess_label_map(regions_to_brats_labels(torch.as_tensor(channels)), options)
    return torch.as_tensor(ConvertToMultiChannelBasedOnBratsClasses()(labels)) > 0  # as the labels are read


def _with_meta(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if hasattr(like, "copy_meta_from"):
        return type(like)(value, meta=like.meta, applied_operations=like.applied_operations)
    return value


class DeliveredLabelMapd(MapTransform):
    """Binary ``(3, *spatial)`` TC/WT/ET channels -> the delivered ``(1, *spatial)`` uint8 BraTS label map.

    The map of :func:`~custom_modules.transforms.regions_to_brats_labels` followed by
    :func:`postprocess_label_map`; MetaTensor metadata (affine, file name) is kept.
    """

    def __init__(
        self,
        keys: KeysCollection,
        keep_largest_component: bool = False,
        min_component_voxels: int = 0,
        et_min_voxels: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.options = LabelMapPostprocessing(keep_largest_component, int(min_component_voxels), int(et_min_voxels))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            regions = d[key]
            labels = postprocess_label_map(regions_to_brats_labels(torch.as_tensor(regions)), self.options)
            d[key] = _with_meta(labels, regions)
        return d


class DeliveredRegionsd(DeliveredLabelMapd):
    """Binary TC/WT/ET channels -> the regions a BraTS evaluator reads from the delivered label map.

    ``(3, *spatial)`` in, ``(3, *spatial)`` float 0/1 out (TC, WT, ET), nested by construction. Metrics in
    validation, evaluation and reports are computed on this, so they score the file that is written.
    """

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = _with_meta(delivered_regions(d[key], self.options).float(), d[key])
        return d
