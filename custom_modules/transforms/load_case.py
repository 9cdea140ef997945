"""``LoadImaged`` with the input checks every entry point needs, once per case.

Two steps with MONAI's ``EnsureChannelFirstd`` between them, as ``inference.json`` writes them:
:class:`LoadImageCased` (read the files; a file that cannot be read, or modalities that do not stack, refuse the
case), then ``EnsureChannelFirstd``, then :class:`CheckCased` (the checks below on the channel-first image). An app
that hands the pipeline an image already in memory (MONAI Deploy's bundle operator drops every transform whose
name holds ``LoadImage``) keeps the channel move and the checks. :class:`LoadCased` is the three in one
(``train.json``).

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
from monai.transforms import EnsureChannelFirstd, LoadImaged, MapTransform

from ..constants import BRATS_LABELS, MODALITY_ORDER
from ..errors import CaseInputError

__all__ = [
    "AFFINE_ATOL",
    "CASE_FILES_META",
    "CheckCased",
    "LoadCased",
    "LoadImageCased",
    "case_name",
    "check_image",
    "check_label",
    "entry_files",
    "is_paths",
]

#: largest difference between the affines of a case's image and label (mm), as ``data_prep.validation``
AFFINE_ATOL = 1e-3
#: the image meta key where :class:`LoadImageCased` keeps the files it read (``", "``-joined), for the checks' errors
CASE_FILES_META = "case_files"
#: what the checks name as the file of an image handed over in memory
IN_MEMORY = "in-memory image"


def is_paths(value: Any) -> bool:
    """Whether a datalist value is a file path or a list of them (not an image already in memory)."""
    if isinstance(value, (str, os.PathLike)):
        return True
    return isinstance(value, (list, tuple)) and all(isinstance(v, (str, os.PathLike)) for v in value)


def case_name(data: Mapping[Hashable, Any], image_key: str = "image") -> str:
    """The case id of a datalist entry: ``case_id`` (its last path part), else the first image file's stem."""
    if data.get("case_id"):
        return os.path.basename(str(data["case_id"]))
    files = data.get(image_key)
    if files is not None and not is_paths(files):  # an image in memory: its meta names the case
        meta = getattr(files, "meta", {})
        if meta.get("case_id"):
            return os.path.basename(str(meta["case_id"]))
        files = _meta_files(files)
    first = files if isinstance(files, (str, os.PathLike)) else (files or ["?"])[0]
    name = os.path.basename(str(first))
    return name.split(".nii")[0]


def _files(value: Any) -> list[str]:
    return [str(value)] if isinstance(value, (str, os.PathLike)) else [str(v) for v in value or []]


def entry_files(entry: Mapping[Hashable, Any], keys: Sequence[str] = ("image", "label")) -> list[str]:
    """The file paths of a datalist entry under ``keys`` (a path or a list of paths each), in order."""
    return [path for key in keys for path in _files(entry.get(key))]


def _meta_files(image: Any) -> list[str]:
    """The files an image was read from, as :class:`LoadImageCased` recorded them, else its ``filename_or_obj``."""
    meta = getattr(image, "meta", {})
    if meta.get(CASE_FILES_META):
        return str(meta[CASE_FILES_META]).split(", ")
    name = meta.get("filename_or_obj")
    return [str(name)] if name else [IN_MEMORY]


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


class LoadImageCased(MapTransform):
    """``LoadImaged(keys)`` (no channel move: ``EnsureChannelFirstd`` follows it) that refuses a case whose files
    cannot be read or do not stack, and records the files in ``meta["case_files"]`` for :class:`CheckCased`.

    Args:
        keys: ``"image"`` and optionally ``"label"``.
        kwargs: passed to ``LoadImaged``.

    Raises:
        CaseInputError: names the case, the files and the reader's problem.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs) -> None:
        super().__init__(keys, allow_missing_keys)
        if kwargs.get("ensure_channel_first"):
            raise ValueError("LoadImageCased: ensure_channel_first must stay off (EnsureChannelFirstd follows it)")
        self.loader = LoadImaged(keys, allow_missing_keys=allow_missing_keys, **kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        case_id = case_name(data, str(self.keys[0]))
        files = {key: _files(data[key]) for key in self.key_iterator(dict(data))}
        try:
            d = self.loader(data)
        except Exception as e:  # nibabel, MONAI's stacking (shape/affine) and OS errors
            cause = " ".join(str(e).split()) or type(e).__name__
            raise CaseInputError(
                case_id, f"cannot load {', '.join(sum(files.values(), []))}: {type(e).__name__}: {cause}"
            ) from None
        for key, paths in files.items():
            if hasattr(d[key], "meta"):
                d[key].meta[CASE_FILES_META] = ", ".join(paths)
        return d


class CheckCased(MapTransform):
    """:func:`check_image` on the channel-first image (the first key), :func:`check_label` on the label if present.

    The files named in errors come from :class:`LoadImageCased`'s record, else the image's ``filename_or_obj``,
    else ``"in-memory image"``.

    Args:
        keys: ``"image"`` and optionally ``"label"``.
        in_channels: channels the network takes (T1c, T1, T2, FLAIR).

    Raises:
        CaseInputError: the case cannot be used; the message names the case and the file.
    """

    def __init__(
        self, keys: KeysCollection, in_channels: int = len(MODALITY_ORDER), allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.in_channels = in_channels

    def __call__(self, data: Mapping[Hashable, Any]) -> Mapping[Hashable, Any]:
        image_key = self.keys[0]
        case_id = case_name(data, str(image_key))
        check_image(case_id, data[image_key], _meta_files(data[image_key]), self.in_channels)
        for key in self.keys[1:]:
            if key in data:
                check_label(case_id, data[key], data[image_key], _meta_files(data[key]))
        return data


class LoadCased(MapTransform):
    """:class:`LoadImageCased`, ``EnsureChannelFirstd`` and :class:`CheckCased` in one transform.

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
        self.steps = (
            LoadImageCased(keys, allow_missing_keys=allow_missing_keys, **kwargs),
            EnsureChannelFirstd(keys, allow_missing_keys=allow_missing_keys),
            CheckCased(keys, in_channels=in_channels, allow_missing_keys=allow_missing_keys),
        )
        self.in_channels = in_channels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for step in self.steps:
            d = step(d)
        return d
