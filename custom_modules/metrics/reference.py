"""The reference study's evaluation metrics (``docs/science.md``), kept only for comparison with its tables.

They are NOT comparable to BraTS region Dice: they pool all channels and all pixels, so the large, easy
channels dominate. Use :func:`custom_modules.metrics.region_dice_metric` for region (TC/WT/ET) Dice.

The reference computed soft Dice over a whole batch of 8 and averaged over batches; these classes compute it per
case (identical at batch size 1, independent of the batch size otherwise).
"""

from __future__ import annotations

from typing import Any

import torch
from monai.utils import MetricReduction

from ._base import ReducedCumulativeMetric

__all__ = ["ReferenceSoftDiceMetric", "ReferenceMeanIoUMetric"]


class ReferenceSoftDiceMetric(ReducedCumulativeMetric):
    """Per-case soft Dice on raw probabilities, no threshold (Keras ``dice_coef``).

    dice = (2 sum y p + smooth) / (sum y + sum p + smooth), summed over all channels and voxels of one case
    (or only channel ``channel`` if given, like the reference's class Dice).

    Inputs: ``y_pred`` sigmoid probabilities and binary ``y``, (B, C, spatial...) or lists of channel-first
    tensors. ``__call__`` returns (B, 1); ``aggregate`` gives the mean.
    """

    def __init__(
        self,
        smooth: float = 1.0,
        channel: int | None = None,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans)
        self.smooth = smooth
        self.channel = channel

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        if self.channel is not None:
            y_pred, y = y_pred[:, self.channel], y[:, self.channel]
        p, t = y_pred.float().flatten(1), y.float().flatten(1)
        dice = (2.0 * (p * t).sum(1) + self.smooth) / (t.sum(1) + p.sum(1) + self.smooth)
        return dice.unsqueeze(1)


class ReferenceMeanIoUMetric(ReducedCumulativeMetric):
    """Per-case IoU of the prediction binarised at ``threshold``, over all channels and voxels.

    iou = (|P & Y| + eps) / (|P| + |Y| - |P & Y| + eps) with eps = 1e-7, as in the reference ``mean_iou``
    (so empty-vs-empty gives 1). Inputs as :class:`ReferenceSoftDiceMetric`; ``__call__`` returns (B, 1).
    """

    def __init__(
        self,
        threshold: float = 0.5,
        eps: float = 1e-7,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans)
        self.threshold = threshold
        self.eps = eps

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        p, t = (y_pred > self.threshold).float().flatten(1), y.float().flatten(1)
        inter = (p * t).sum(1)
        iou = (inter + self.eps) / (p.sum(1) + t.sum(1) - inter + self.eps)
        return iou.unsqueeze(1)
