"""Attention gate of RAAGR2-Net (``docs/network.md``): a per-channel, per-pixel gate on the encoder skip."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["AttentionBlock"]


class AttentionBlock(nn.Module):
    """Additive attention gate ``x * sigmoid(BN(Conv1x1(ReLU(BN(Conv1x1(g)) + BN(Conv1x1(x))))))``.

    Unlike Oktay et al.'s single-channel gate, ``psi`` outputs ``f_l`` channels (spec: ``2 * F_int = F``),
    i.e. one gate value per channel and pixel. All convs have biases. Parameters (``F_g = F_l = F``,
    ``F_int = F / 2``): ``1.5 F^2 + 6 F``.

    Args:
        f_g: channels of the gating signal ``g`` (the UpConv output).
        f_l: channels of the skip ``x`` (the encoder feature); also the gate's output channels.
        f_int: intermediate channels (spec: ``f_l // 2``).

    Shapes: ``g: [B, f_g, H, W]``, ``x: [B, f_l, H, W]`` -> ``[B, f_l, H, W]``.
    """

    def __init__(self, f_g: int, f_l: int, f_int: int) -> None:
        super().__init__()
        self.w_g = nn.Sequential(nn.Conv2d(f_g, f_int, kernel_size=1), nn.BatchNorm2d(f_int))
        self.w_x = nn.Sequential(nn.Conv2d(f_l, f_int, kernel_size=1), nn.BatchNorm2d(f_int))
        self.relu = nn.ReLU()
        self.psi = nn.Sequential(nn.Conv2d(f_int, f_l, kernel_size=1), nn.BatchNorm2d(f_l), nn.Sigmoid())

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        alpha = self.psi(self.relu(self.w_g(g) + self.w_x(x)))
        return x * alpha
