"""Metrics for raagr2-slim: BraTS region Dice (MONAI), BraTS HD95, and the reference study's metrics.

Channel order of predictions and labels is MONAI's BraTS order, :data:`custom_modules.constants.REGION_CHANNELS`.
"""

from __future__ import annotations

from monai.metrics import DiceMetric

from .hausdorff95 import BRATS_EMPTY_PENALTY, HD95_DEFINITIONS, BraTSHausdorff95Metric
from .reference import ReferenceMeanIoUMetric, ReferenceSoftDiceMetric
from .summary import region_summary

__all__ = [
    "region_dice_metric",
    "BraTSHausdorff95Metric",
    "BRATS_EMPTY_PENALTY",
    "HD95_DEFINITIONS",
    "ReferenceSoftDiceMetric",
    "ReferenceMeanIoUMetric",
    "region_summary",
]


def region_dice_metric(reduction: str = "mean_batch") -> DiceMetric:
    """BraTS region Dice on binarised (B, 3, spatial...) masks; the bundles' validation key metric.

    ``ignore_empty=False``: empty ground truth scores 1.0 if the prediction is empty too, else 0.0 (BraTS).
    ``reduction="mean_batch"`` aggregates one value per region; ``"mean"`` one scalar (a key metric).
    """
    return DiceMetric(include_background=True, reduction=reduction, ignore_empty=False)
