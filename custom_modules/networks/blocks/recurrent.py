"""Recurrent residual (R2) decoder blocks of RAAGR2-Net (``docs/network.md``)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvOne", "RecurrentBlock", "RRCNNBlock"]


class ConvOne(nn.Module):
    """Depthwise 3x3 (bias, pad 1) -> Conv1x1 (bias) -> BN -> ReLU; ``K^2 + 13K`` parameters.

    Args:
        channels: K (input and output channels).

    Shapes: ``x: [B, K, H, W] -> [B, K, H, W]``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels),
            nn.Conv2d(channels, channels, kernel_size=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class RecurrentBlock(nn.Module):
    """One :class:`ConvOne` ``f`` applied ``t + 1`` times with shared weights and shared BN.

    ``h = f(x)``, then ``t`` times ``h = f(x + h)``; returns ``h``. Parameters: ``K^2 + 13K``.

    Args:
        channels: K.
        t: number of recurrent steps after the first application (spec: 2, i.e. 3 applications).

    Shapes: ``x: [B, K, H, W] -> [B, K, H, W]``.
    """

    def __init__(self, channels: int, t: int = 2) -> None:
        super().__init__()
        self.t = t
        self.conv = ConvOne(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        for _ in range(self.t):
            h = self.conv(x + h)
        return h


class RRCNNBlock(nn.Module):
    """Recurrent residual block: ``x0 = Dropout(Conv1x1(x))``; returns ``x0 + Rec2(Rec1(x0))`` (no final activation).

    Parameters: ``C_in * K + 2K^2 + 27K``.

    Args:
        in_channels: C_in.
        out_channels: K.
        t: recurrent steps of each :class:`RecurrentBlock`.
        dropout: dropout probability after the 1x1 projection (spec: 0.2).

    Shapes: ``x: [B, C_in, H, W] -> [B, K, H, W]``.
    """

    def __init__(self, in_channels: int, out_channels: int, t: int = 2, dropout: float = 0.2) -> None:
        super().__init__()
        self.conv1x1 = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.dropout = nn.Dropout(p=dropout)
        self.rec1 = RecurrentBlock(out_channels, t=t)
        self.rec2 = RecurrentBlock(out_channels, t=t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.dropout(self.conv1x1(x))
        return x0 + self.rec2(self.rec1(x0))
