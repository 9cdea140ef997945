"""``LoadImaged`` with the input checks every entry point needs, once per case: :class:`LoadCased`.

A case is refused with a :class:`~custom_modules.errors.CaseInputError` naming the case, the file and the problem
when a file cannot be read or the modalities do not stack (shape or affine), when the image has another number
of channels than the network takes, holds NaN/Inf, has a modality whose voxels are all one value (an empty
modality), or has no brain at all; a label must match the image's shape and affine and hold BraTS values only.
The image checks cost one pass over the voxels (``aminmax``), once per case, not a pass per slice.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import LoadImaged, MapTransform

from ..constants import BRATS_LABELS, MODALITY_ORDER
from ..errors import CaseInputError

__all__ = ["AFFINE_ATOL", "LoadCased", "case_name", "check_image", "check_label", "entry_files"]

#: largest difference between the affines of a case's image and label (mm), as ``data_prep.validation``
AFFINE_ATOL = 1e-3


def case_name(data: Mapping[Hashable, Any], image_key: str = "image") -> str:
    """The case id of a datalist entry: ``case_id`` (its last path part), else the first image file's stem."""
    if data.get("case_id"):
        return os.path.basename(str(data["case_id"]))
    files = data.get(image_key)
    first = files if isinstance(files, (str, os.PathLike)) else (files or ["?"])[0]
    name = os.path.basename(str(first))
    return name.split(".nii")[0]


def _files(value: Any) -> list[str]:
    return [str(value)] if isinstance(value, (str, os.PathLike)) else [str(v) for v in value or []]


def entry_files(entry: Mapping[Hashable, Any], keys: Sequence[str] = ("image", "label")) -> list[str]:
    """The file paths of a datalist entry under ``keys`` (a path or a list of paths each), in order."""
    return [path for key in keys for path in _files(entry.get(key))]


def _channel_file(files: Sequence[str], channel: int) -> str:
    """The file behind ``channel``: one file per modality, else channel ``c`` of the one 4D file."""
    return files[channel] if len(files) > 1 else f"{files[0]} (channel {channel})"


def check_image(case_id: str, image: torch.Tensor, files: Sequence[str], in_channels: int) -> None:
    """Refuse a loaded ``(C, H, W, D)`` image: wrong channel count, NaN/Inf, an empty modality, no brain."""
    if image.ndim != 4:
        raise CaseInputError(case_id, f"{files[0]}: image has {image.ndim - 1} spatial dimensions, expected 3")
    if image.shape[0] != in_channels:
        order = ", ".join(MODALITY_ORDER) if in_channels == len(MODALITY_ORDER) else f"{in_channels} modalities"
        raise CaseInputError(
            case_id, f"{', '.join(files)}: {image.shape[0]} image channels, the network takes {in_channels} ({order})"
        )
    flat = image.reshape(in_channels, -1)
    low, high = flat.aminmax(dim=1)  # one pass over the voxels; NaN and Inf show in the extremes
    if flat.is_floating_point() and not bool(torch.isfinite(low).all() & torch.isfinite(high).all()):
        c = int((~(torch.isfinite(low) & torch.isfinite(high))).nonzero()[0])
        n = int((~torch.isfinite(flat[c])).sum())
        raise CaseInputError(case_id, f"{_channel_file(files, c)}: {n} voxels are NaN or Inf")
    constant = low == high
    if bool(constant.all()) and not bool(low.any()):
        raise CaseInputError(case_id, f"{', '.join(files)}: no brain, every modality is 0 everywhere")
    if bool(constant.any()):
        c = int(constant.nonzero()[0])
        raise CaseInputError(case_id, f"{_channel_file(files, c)}: every voxel is {float(low[c]):g}, an empty modality")


def check_label(case_id: str, label: torch.Tensor, image: torch.Tensor, files: Sequence[str]) -> None:
    """Refuse a loaded ``(1, H, W, D)`` BraTS label map that does not match ``image`` or holds other values."""
    if tuple(label.shape[1:]) != tuple(image.shape[1:]):
        raise CaseInputError(
            case_id, f"{files[0]}: label shape {tuple(label.shape[1:])} differs from image {tuple(image.shape[1:])}"
        )
    affines = [getattr(t, "affine", None) for t in (label, image)]
    if all(a is not None for a in affines):
        diff = float(np.abs(np.asarray(affines[0], dtype=float) - np.asarray(affines[1], dtype=float)).max())
        if diff > AFFINE_ATOL:
            raise CaseInputError(case_id, f"{files[0]}: label affine differs from the image's by {diff:.4g} mm")
    values = torch.unique(torch.as_tensor(label))
    bad = [v for v in values.tolist() if v not in BRATS_LABELS]
    if bad:
        raise CaseInputError(
            case_id, f"{files[0]}: label values {bad} are not BraTS {sorted(BRATS_LABELS)} (convert with data_prep)"
        )


class LoadCased(MapTransform):
    """``LoadImaged(keys, ensure_channel_first=True)``, then :func:`check_image` and :func:`check_label`.

    Args:
        keys: ``"image"`` and optionally ``"label"`` (the first key is the image).
        in_channels: channels the network takes (T1c, T1, T2, FLAIR).
        kwargs: passed to ``LoadImaged``.

    Raises:
        CaseInputError: the case cannot be used; the message names the case and the file.
    """

    def __init__(
        self, keys: KeysCollection, in_channels: int = len(MODALITY_ORDER), allow_missing_keys: bool = False, **kwargs
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        kwargs.setdefault("ensure_channel_first", True)
        self.loader = LoadImaged(keys, allow_missing_keys=allow_missing_keys, **kwargs)
        self.in_channels = in_channels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        image_key = self.keys[0]
        case_id = case_name(data, str(image_key))
        files = {key: _files(data[key]) for key in self.key_iterator(dict(data))}
        try:
            d = self.loader(data)
        except Exception as e:  # nibabel, MONAI's stacking (shape/affine) and OS errors
            cause = " ".join(str(e).split()) or type(e).__name__
            raise CaseInputError(
                case_id, f"cannot load {', '.join(sum(files.values(), []))}: {type(e).__name__}: {cause}"
            ) from None
        check_image(case_id, d[image_key], files[image_key], self.in_channels)
        for key in self.keys[1:]:
            if key in d:
                check_label(case_id, d[key], d[image_key], files[key])
        return d
