"""Score a network per patient on whole volumes: the delivered label map's WT/TC/ET Dice and HD95.

One case is segmented once (channel probabilities), then scored under each post-processing option; the
label map of each option is read back as regions exactly as the bundles' validation does
(:func:`custom_modules.transforms.delivered_regions`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import torch
from monai.metrics import compute_dice

from custom_modules.constants import REGION_CHANNELS
from custom_modules.inference import BrainSliceInferer
from custom_modules.metrics import BraTSHausdorff95Metric
from custom_modules.transforms import LabelMapPostprocessing, delivered_regions

__all__ = ["NO_POSTPROCESSING", "segment", "score_regions", "evaluate_cases", "volume_latency"]

NO_POSTPROCESSING = "none"


def segment(
    net: torch.nn.Module, image: torch.Tensor, crop_to_brain: bool = True, skip_empty_slices: bool = True
) -> torch.Tensor:
    """``(C, H, W, D)`` image -> ``(3, H, W, D)`` bool thresholded TC/WT/ET channels (sigmoid > 0.5)."""
    inferer = BrainSliceInferer(
        roi_size=tuple(image.shape[1:3]),
        sw_batch_size=8,
        skip_empty_slices=skip_empty_slices,
        crop_to_brain=crop_to_brain,
    )
    with torch.no_grad():
        return torch.sigmoid(inferer(image[None], net)[0].float()) > 0.5


def score_regions(pred: torch.Tensor, label: torch.Tensor, spacing: Sequence[float], hd95: str) -> dict[str, float]:
    """``{"<region>_dice", "<region>_hd95"}`` of ``(3, *spatial)`` bool regions against the label's."""
    dice = compute_dice(pred[None].float(), label[None].float(), include_background=True, ignore_empty=False)[0]
    hd = BraTSHausdorff95Metric(hd95, spacing=list(spacing))(pred[None].float(), label[None].float())[0]
    row = {f"{r}_dice": float(v) for r, v in zip(REGION_CHANNELS, dice)}
    row.update({f"{r}_hd95": float(v) for r, v in zip(REGION_CHANNELS, hd)})
    return row


def label_spacing(label_path: str | Path) -> list[float]:
    """Voxel size (mm) of a NIfTI label, from its header."""
    return [float(z) for z in nib.load(str(label_path)).header.get_zooms()[:3]]


def evaluate_cases(
    net: torch.nn.Module,
    cases: Iterable[Mapping[str, Any]],
    postprocessing: Mapping[str, LabelMapPostprocessing] | None = None,
    hd95: str = "brats2023",
    crop_to_brain: bool = True,
    skip_empty_slices: bool = True,
    keep_channels: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """Per-case rows for each post-processing option: ``{option: [{"case", "patient", <metrics>}, ...]}``.

    ``cases`` as :func:`raagr2_tools.shipping.cases.load_cases` yields them, plus ``"spacing"`` (mm). Option
    :data:`NO_POSTPROCESSING` (the bundles' default) is always scored. With ``keep_channels`` each row of that
    option also holds ``"channels"``, the thresholded prediction (for agreement between models).
    """
    options = {NO_POSTPROCESSING: LabelMapPostprocessing(), **dict(postprocessing or {})}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in options}
    for case in cases:
        channels = segment(net, case["image"], crop_to_brain, skip_empty_slices)
        for name, option in options.items():
            regions = delivered_regions(channels, option)
            row = {"case": case["case_id"], "patient": case["patient_id"]}
            row.update(score_regions(regions, case["label"], case["spacing"], hd95))
            if keep_channels and name == NO_POSTPROCESSING:
                row["channels"] = regions
            rows[name].append(row)
    return rows


def volume_latency(
    net: torch.nn.Module,
    image: torch.Tensor,
    repeats: int = 3,
    crop_to_brain: bool = True,
    skip_empty_slices: bool = True,
) -> dict[str, Any]:
    """Seconds to segment one volume, ``repeats`` times after one warm-up: ``{"volume_s", "volume_s_median"}``."""
    segment(net, image[..., image.shape[-1] // 2 - 4 : image.shape[-1] // 2 + 4], crop_to_brain, skip_empty_slices)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        segment(net, image, crop_to_brain, skip_empty_slices)
        times.append(time.perf_counter() - start)
    ordered = sorted(times)
    return {"volume_s": times, "volume_s_median": ordered[len(ordered) // 2], "repeats": repeats}
