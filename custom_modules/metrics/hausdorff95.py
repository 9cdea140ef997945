"""95th-percentile Hausdorff distance (HD95, mm) of BraTS regions, in one of two named definitions.

Definitions (the ``definition`` key; reports name the one used):

- ``"brats2023"`` (default): the BraTS 2023 challenge's full-image ("legacy") HD95, as its official metrics
  code computes it with DeepMind's ``surface-distance``: the surfaces are surface elements (surfels) of the
  voxel grid with their areas in mm^2; for each direction the distances from one surface's surfels to the
  other surface are sorted and the 95th percentile is taken on the **area-weighted** cumulative distribution;
  HD95 is the larger of the two directions. Computed with MONAI's subvoxel edges
  (``get_edge_surface_distance(use_subvoxels=True)``), which implements the same surfel tables.
- ``"monai"``: MONAI's ``compute_hausdorff_distance(percentile=95)``: boundary voxels by binary erosion,
  distances between voxel centres, unweighted 95th percentile per direction, the larger of the two.

Empty masks (both definitions): prediction and ground truth both empty -> 0.0; exactly one empty -> the
penalty (374 mm in the BraTS 2023 code, which replaces inf by 374). The result is never NaN or inf.

The voxel spacing must be known: given as ``spacing`` or read from the ground truth MetaTensor's affine.
Without either the metric raises instead of assuming 1 mm.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from monai.metrics import compute_hausdorff_distance
from monai.metrics.utils import get_edge_surface_distance
from monai.utils import MetricReduction

from ._base import ReducedCumulativeMetric

__all__ = ["BraTSHausdorff95Metric", "BRATS_EMPTY_PENALTY", "HD95_DEFINITIONS", "spacing_from_affine", "surfel_hd"]

#: distance (mm) given when exactly one of prediction / ground truth is empty, as in the BraTS 2023 metrics code
BRATS_EMPTY_PENALTY = 374.0
#: the definitions :class:`BraTSHausdorff95Metric` offers, with the sentence reports print
HD95_DEFINITIONS: dict[str, str] = {
    "brats2023": "BraTS 2023 full-image HD95: surfel-area-weighted 95th percentile of surface distances "
    "(DeepMind surface-distance, as the official BraTS 2023 metrics code), max of both directions",
    "monai": "MONAI compute_hausdorff_distance(percentile=95): unweighted 95th percentile of boundary-voxel "
    "distances, max of both directions",
}


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


def _weighted_percentile(distances: torch.Tensor, areas: torch.Tensor, percentile: float) -> float:
    """Distance at which the area-weighted cumulative share of surfels first reaches ``percentile`` %."""
    keep = areas > 0
    distances, areas = distances[keep].double(), areas[keep].double()
    if distances.numel() == 0:
        return 0.0
    order = torch.argsort(distances)
    cumulative = torch.cumsum(areas[order], 0) / areas.sum()
    index = int(torch.searchsorted(cumulative, torch.tensor(percentile / 100.0, dtype=torch.float64)))
    return float(distances[order][min(index, distances.numel() - 1)])


def surfel_hd(pred: torch.Tensor, gt: torch.Tensor, spacing: Sequence[float], percentile: float = 95.0) -> float:
    """BraTS 2023 HD (see module docstring) of two non-empty binary masks ``(*spatial)``; mm."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        edges, distances, areas = get_edge_surface_distance(
            pred, gt, spacing=list(spacing), use_subvoxels=True, symmetric=True, warn_empty=False
        )
    # areas are grids over the cropped volume; the distances belong to its edge voxels
    return max(_weighted_percentile(d, a[e], percentile) for e, d, a in zip(edges, distances, areas))


class BraTSHausdorff95Metric(ReducedCumulativeMetric):
    """Per case and per channel HD95 in mm, in the ``definition`` named (see the module docstring).

    ``y_pred`` and ``y`` are binarised masks, batch-first (B, C, H, W[, D]) or lists of channel-first tensors;
    values > 0.5 count as foreground. ``__call__`` returns (B, C); ``aggregate`` reduces like MONAI
    (default ``"mean"``; use ``"mean_batch"`` for one value per region).

    Args:
        definition: ``"brats2023"`` or ``"monai"``, see :data:`HD95_DEFINITIONS`.
        spacing: voxel spacing in mm, a number or one per spatial dim. None: taken from the ground truth's
            affine (a MetaTensor); a ``spacing=`` keyword given to ``__call__`` overrides both.
        empty_penalty: distance given when exactly one of prediction / ground truth is empty.
        percentile: Hausdorff percentile, 95 for HD95.
        reduction, get_not_nans: as in MONAI's ``HausdorffDistanceMetric``.

    Raises:
        ValueError: an unknown ``definition``; or, when called, no spacing given and ``y`` has no affine.
    """

    def __init__(
        self,
        definition: str = "brats2023",
        spacing: float | Sequence[float] | None = None,
        empty_penalty: float = BRATS_EMPTY_PENALTY,
        percentile: float = 95.0,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans)
        if definition not in HD95_DEFINITIONS:
            raise ValueError(f"hd95_definition must be one of {sorted(HD95_DEFINITIONS)}, got {definition!r}")
        self.definition = definition
        self.spacing = spacing
        self.empty_penalty = empty_penalty
        self.percentile = percentile

    def _spacings(self, y: torch.Tensor, spacing: Any) -> list[list[float]]:
        """One spacing per batch item (mm per spatial dim)."""
        spatial = y.ndim - 2
        if spacing is None:
            spacing = spacing_from_affine(y)
            if spacing is None:
                raise ValueError(
                    "HD95 needs the voxel spacing: the ground truth carries no affine; pass spacing= (mm) "
                    "or load labels as MetaTensors"
                )
            return spacing
        if isinstance(spacing, (int, float)):
            return [[float(spacing)] * spatial] * y.shape[0]
        spacing = list(spacing)
        if spacing and isinstance(spacing[0], (int, float)):
            return [[float(s) for s in spacing]] * y.shape[0]
        return [[float(s) for s in item] for item in spacing]

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        if y_pred.ndim < 3:
            raise ValueError("y_pred should have at least three dimensions (B, C, spatial...).")
        spacings = self._spacings(y, kwargs.get("spacing", self.spacing))
        y_pred, y = torch.as_tensor(y_pred) > 0.5, torch.as_tensor(y) > 0.5
        pred_empty, gt_empty = ~y_pred.flatten(2).any(-1), ~y.flatten(2).any(-1)
        if self.definition == "monai":
            with warnings.catch_warnings():  # empty masks are handled below; the other one is MONAI-internal
                warnings.filterwarnings("ignore", message=".*is all 0, this may result in nan/inf distance")
                warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
                hd = compute_hausdorff_distance(
                    y_pred, y, include_background=True, percentile=self.percentile, spacing=spacings
                ).to(device=y_pred.device, dtype=torch.float32)
        else:
            hd = torch.zeros(y_pred.shape[:2], dtype=torch.float32, device=y_pred.device)
            for b in range(y_pred.shape[0]):
                for c in range(y_pred.shape[1]):
                    if not (pred_empty[b, c] or gt_empty[b, c]):
                        hd[b, c] = surfel_hd(y_pred[b, c], y[b, c], spacings[b], self.percentile)
        hd = torch.where(pred_empty ^ gt_empty, torch.full_like(hd, self.empty_penalty), hd)
        return torch.where(pred_empty & gt_empty, torch.zeros_like(hd), hd)
