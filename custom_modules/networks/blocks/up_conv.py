"""Decoder upsampling block of RAAGR2-Net (``docs/network.md``)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["UpConv"]


class UpConv(nn.Module):
    """Bilinear x2 upsample (``align_corners=True``) -> Conv3x3 (bias, pad 1) -> BN -> ReLU; ``9CK + 3K`` parameters.

    Args:
        in_channels: C.
        out_channels: K.

    Shapes: ``x: [B, C, H, W] -> [B, K, 2H, 2W]``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=True),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)
