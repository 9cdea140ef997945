"""The two numeric steps the ONNX-only runner must reproduce bit for bit, as dictionary transforms: the z-score
(:class:`ZScoreNonzerod`) and the threshold (:class:`RegionsFromLogitsd`).

Both call the functions of :mod:`custom_modules.onnx_runner` (numpy only; shipped as ``scripts/onnx_runner.py``), so
``run inference`` and the runner compute the same bits: MONAI's ``NormalizeIntensityd`` computes its statistics in
float32 with torch's summation order, and ``Activationsd(sigmoid)`` + ``AsDiscreted(threshold)`` round the sigmoid
in float32, and either can flip a voxel whose logit lies within ~1e-7 of the threshold between implementations.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ..onnx_runner import logit_threshold, regions_from_logits, zscore_nonzero

__all__ = ["RegionsFromLogitsd", "ZScoreNonzerod"]


def _like(values: torch.Tensor | np.ndarray, template: Any) -> torch.Tensor:
    """``values`` as a tensor on ``template``'s device, a ``MetaTensor`` with its meta when it is one."""
    tensor = torch.as_tensor(values, device=getattr(template, "device", None))
    return (
        MetaTensor(tensor, meta=template.meta, applied_operations=template.applied_operations)
        if isinstance(template, MetaTensor)
        else tensor
    )


class ZScoreNonzerod(MapTransform):
    """Each channel of a ``(C, H, W, D)`` image z-scored over its nonzero voxels (float32 out; zero voxels stay 0):
    :func:`custom_modules.onnx_runner.zscore_nonzero`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
            d[key] = _like(zscore_nonzero(array), image)
        return d


class RegionsFromLogitsd(MapTransform):
    """Binary region channels ``sigmoid(logits) >= threshold`` from ``(C, ...)`` logits, decided on the logits
    (:func:`custom_modules.onnx_runner.regions_from_logits`); float 0/1 in the logits' dtype, as ``AsDiscreted``.

    Args:
        keys: the network output (``"pred"``).
        threshold: probability threshold in (0, 1).
    """

    def __init__(self, keys: KeysCollection, threshold: float = 0.5, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.threshold = float(threshold)
        logit_threshold(self.threshold)  # refuse a threshold outside (0, 1) when the config is read

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            logits = d[key]
            d[key] = regions_from_logits(logits, self.threshold).to(logits.dtype)
        return d
