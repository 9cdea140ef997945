"""Losses for raagr2-slim.

Bundle configs pick the training loss by ``_target_``; all take ``(input=logits, target=binary masks)``:

- ``{"_target_": "custom_modules.losses.WeightedBCEDiceLoss"}``: the reference study's loss (``docs/science.md``);
- ``{"_target_": "DiceCELoss", "sigmoid": true}`` or ``{"_target_": "DiceFocalLoss", "sigmoid": true}``: MONAI.
"""

from .weighted_bce_dice import WeightedBCEDiceLoss, border_weight_map

__all__ = ["WeightedBCEDiceLoss", "border_weight_map"]
