"""BraTS-style 95th-percentile Hausdorff distance with the BraTS conventions for empty masks."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from monai.metrics import compute_hausdorff_distance
from monai.utils import MetricReduction

from ._base import ReducedCumulativeMetric

__all__ = ["BraTSHausdorff95Metric", "BRATS_EMPTY_PENALTY", "spacing_from_affine"]

#: diagonal of the 240 x 240 x 155 mm BraTS volume, sqrt(240^2 + 240^2 + 155^2)
BRATS_EMPTY_PENALTY = 373.1287


def spacing_from_affine(y: torch.Tensor) -> list[list[float]] | None:
    """Voxel sizes (mm) per batch item from a MetaTensor's affine, or None when ``y`` carries no usable affine."""
    affine = getattr(y, "affine", None)
    if affine is None:
        return None
    affine = torch.as_tensor(affine, dtype=torch.float64).cpu()
    affine = affine.unsqueeze(0).expand(y.shape[0], -1, -1) if affine.ndim == 2 else affine
    spatial = y.ndim - 2
    if affine.shape[0] != y.shape[0] or affine.shape[-1] < spatial + 1:
        return None
    return [torch.linalg.norm(a[:spatial, :spatial], dim=0).tolist() for a in affine]


class BraTSHausdorff95Metric(ReducedCumulativeMetric):
    """Per case and per channel HD95 in mm (MONAI ``compute_hausdorff_distance``, ``percentile=95``).

    Empty masks follow BraTS: prediction and ground truth both empty -> 0.0; exactly one empty ->
    ``empty_penalty``; the result is never NaN or inf. All channels are scored (``include_background=True``).

    ``y_pred`` and ``y`` are binarised masks, batch-first (B, C, H, W[, D]) or lists of channel-first tensors;
    values > 0.5 count as foreground. ``__call__`` returns (B, C); ``aggregate`` reduces like MONAI
    (default ``"mean"``; use ``"mean_batch"`` for one value per region).

    Args:
        spacing: voxel spacing in mm, a number or one per spatial dim. None: taken from the ground truth's
            affine when ``y`` is a MetaTensor (the norms of its spatial columns), else 1 mm. A ``spacing=``
            keyword given to ``__call__`` overrides both (forms as :func:`monai.metrics.compute_hausdorff_distance`).
        empty_penalty: distance given when exactly one of prediction / ground truth is empty.
        percentile: Hausdorff percentile, 95 for HD95.
        reduction, get_not_nans: as in MONAI's ``HausdorffDistanceMetric``.
    """

    def __init__(
        self,
        spacing: float | Sequence[float] | None = None,
        empty_penalty: float = BRATS_EMPTY_PENALTY,
        percentile: float = 95.0,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans)
        self.spacing = spacing
        self.empty_penalty = empty_penalty
        self.percentile = percentile

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        if y_pred.ndim < 3:
            raise ValueError("y_pred should have at least three dimensions (B, C, spatial...).")
        spacing = kwargs.get("spacing", self.spacing)
        if spacing is None:
            spacing = spacing_from_affine(y)
        y_pred, y = y_pred > 0.5, y > 0.5
        pred_empty, gt_empty = ~y_pred.flatten(2).any(-1), ~y.flatten(2).any(-1)
        with warnings.catch_warnings():  # empty masks are handled below; the other one is MONAI-internal
            warnings.filterwarnings("ignore", message=".*is all 0, this may result in nan/inf distance")
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
            hd = compute_hausdorff_distance(
                y_pred,
                y,
                include_background=True,
                percentile=self.percentile,
                spacing=spacing,
            ).to(device=y_pred.device, dtype=torch.float32)
        hd = torch.where(pred_empty ^ gt_empty, torch.full_like(hd, self.empty_penalty), hd)
        return torch.where(pred_empty & gt_empty, torch.zeros_like(hd), hd)
