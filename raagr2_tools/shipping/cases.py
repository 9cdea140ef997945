"""Real cases for export checks: a bundle's own inference preprocessing, region labels, and slice sampling."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, ConvertToMultiChannelBasedOnBratsClassesd, LoadImaged

from custom_modules.data import load_datalist
from raagr2_tools.authoring.config import bundle_parser


def load_cases(
    bundle_root: str | Path,
    dataset_dir: str | Path,
    data_list_file_path: str | Path,
    split: str,
    max_cases: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Cases of list ``split`` as the bundle's inference sees them: ``{"case_id", "patient_id",
    "image": (C, H, W, D) float32, "label": (3, H, W, D) bool TC/WT/ET or None, "spacing": the label's voxel
    size in mm or None}``, one at a time (a BraTS volume is ~140 MB)."""
    entries = load_datalist(data_list_file_path, split, dataset_dir)[:max_cases]
    preprocessing = bundle_parser(bundle_root).get_parsed_content("preprocessing", instantiate=True)
    labels = Compose(
        [LoadImaged("label", ensure_channel_first=True), ConvertToMultiChannelBasedOnBratsClassesd("label")]
    )
    for entry in entries:
        image = torch.as_tensor(preprocessing({"image": entry["image"]})["image"]).float()
        loaded = labels({"label": entry["label"]})["label"] if entry.get("label") else None
        label = torch.as_tensor(loaded).bool() if loaded is not None else None
        spacing = [float(v) for v in loaded.pixdim[:3]] if loaded is not None else None
        case_id = Path(str(entry.get("case_id", entry["image"][0]))).name
        yield {
            "case_id": case_id,
            "patient_id": Path(str(entry.get("patient_id", case_id))).name,  # the datalist loader may join it to a path
            "image": image,
            "label": label,
            "spacing": spacing,
        }


def sample_slices(
    cases: Sequence[dict[str, Any]] | Iterator[dict[str, Any]], count: int, tumour_fraction: float = 0.5
) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """About ``count`` axial (C, H, W) slices spread evenly over the cases' brain slices, ``tumour_fraction`` of
    them holding tumour (whole tumour region), the rest brain without tumour. Returns (slices, where-from)."""
    cases = list(cases)
    per_case = math.ceil(count / max(len(cases), 1))
    slices, records = [], []
    for case in cases:
        image, label = case["image"], case["label"]
        brain = (image != 0).any(dim=0).flatten(0, 1).any(dim=0)  # (D,)
        tumour = label[1].flatten(0, 1).any(dim=0) if label is not None else torch.zeros_like(brain)
        pools = [(torch.nonzero(tumour).flatten(), round(per_case * tumour_fraction) if tumour.any() else 0)]
        pools.append((torch.nonzero(brain & ~tumour).flatten(), per_case - pools[0][1]))
        for indices, wanted in pools:
            if wanted <= 0 or not len(indices):
                continue
            for d in np.unique(np.linspace(0, len(indices) - 1, min(wanted, len(indices))).round().astype(int)):
                z = int(indices[d])
                slices.append(image[..., z].numpy())
                records.append({"case_id": case["case_id"], "slice": z, "tumour": bool(tumour[z])})
    return slices[:count], records[:count]


def pad_to_multiple(batch: np.ndarray, divisor: int = 16) -> np.ndarray:
    """Zero-pad the last two axes of ``batch`` up to multiples of ``divisor``."""
    pads = [(0, 0)] * (batch.ndim - 2) + [(0, -s % divisor) for s in batch.shape[-2:]]
    return np.pad(batch, pads)
