"""Real cases for export checks: a bundle's own inference preprocessing, region labels, and slice sampling."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, ConvertToMultiChannelBasedOnBratsClassesd, LoadImaged

from custom_modules.data import load_datalist
from custom_modules.data.screening import SKIPPED_KEY
from custom_modules.data.screening import case_error as _case_error
from custom_modules.errors import CaseInputError
from custom_modules.transforms import PredictionTargetd
from custom_modules.transforms.load_case import case_name, check_label
from raagr2_tools.authoring.config import bundle_parser

logger = logging.getLogger(__name__)


def load_cases(
    bundle_root: str | Path,
    dataset_dir: str | Path,
    data_list_file_path: str | Path,
    split: str,
    max_cases: int | None = None,
    skipped: list[dict[str, str]] | None = None,
) -> Iterator[dict[str, Any]]:
    """Cases of list ``split`` as the bundle's inference sees them: ``{"case_id", "patient_id",
    "image": (C, H, W, D) float32, "label": (3, H, W, D) bool TC/WT/ET or None, "spacing": the label's voxel
    size in mm or None}``, one at a time (a BraTS volume is ~140 MB).

    Each case is checked as inference checks it (:class:`custom_modules.transforms.LoadCased`, and its label
    against the image); a bad case, or one whose files are missing, is logged and left out, and its record
    ``{"case_id", "skipped_reason"}`` is appended to ``skipped`` when given."""
    entries = load_datalist(data_list_file_path, split, dataset_dir, on_bad_case="skip")
    if skipped is not None:
        skipped += entries.skipped
    shipped = bundle_parser(bundle_root).get_parsed_content("preprocessing", instantiate=True)
    # the loading and normalisation of inference, without its check of the prediction file (nothing is written)
    preprocessing = Compose([t for t in shipped.transforms if not isinstance(t, PredictionTargetd)])
    load_label = LoadImaged("label", ensure_channel_first=True)
    to_regions = ConvertToMultiChannelBasedOnBratsClassesd("label")
    used = 0
    for entry in entries:
        if max_cases is not None and used >= max_cases:
            return
        try:
            image = preprocessing({k: entry[k] for k in ("case_id", "image") if k in entry})["image"]
            loaded = None
            if entry.get("label"):
                try:
                    raw = load_label({"label": entry["label"]})["label"]
                except Exception as e:
                    raise CaseInputError(case_name(entry), f"cannot load {entry['label']}: {e}") from None
                check_label(case_name(entry), raw, image, [str(entry["label"])])
                loaded = to_regions({"label": raw})["label"]
        except Exception as e:
            error = _case_error(e)
            if error is None:
                raise
            logger.warning(f"{data_list_file_path} '{split}': skipped {error}")
            if skipped is not None:
                skipped.append({"case_id": error.case_id, SKIPPED_KEY: error.problem})
            continue
        used += 1
        image = torch.as_tensor(image).float()
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
