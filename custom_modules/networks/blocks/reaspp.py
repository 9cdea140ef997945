"""ReASPP3: the residual atrous spatial pyramid pooling encoder block of RAAGR2-Net.

Architecture: ``docs/network.md``. The pieces are split so that a
weight-shared variant (``docs/network.md``) can reuse :class:`ReASPPFusion` from a separate file.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

__all__ = ["grouped_conv3x3", "ReASPPBranch", "ReASPPFusion", "ReASPP3"]


def grouped_conv3x3(in_channels: int, out_channels: int, dilation: int = 1, bias: bool = True) -> nn.Conv2d:
    """Spec "G3(C->K)": a 3x3 conv with ``groups=in_channels`` (channel multiplier K/C), same padding.

    This is *not* a depthwise-separable conv: weight shape is ``(K, 1, 3, 3)``, bias ``(K,)``,
    i.e. ``10 * K`` parameters. ``out_channels`` must be a multiple of ``in_channels``.
    """
    if out_channels % in_channels != 0:
        raise ValueError(f"grouped_conv3x3 needs out_channels % in_channels == 0, got {in_channels}->{out_channels}.")
    return nn.Conv2d(
        in_channels, out_channels, kernel_size=3, padding=dilation, dilation=dilation, groups=in_channels, bias=bias
    )


class ReASPPBranch(nn.Module):
    """One baseline ReASPP3 branch: ``a = ReLU(BN(first_op(x)))``, ``b = ReLU(BN(Conv1x1(a)))``, returns ``a + b``.

    ``first_op`` is either ``G3(C->K, dilation) -> Conv1x1(K->K)`` (``dense=False``, spec branches 1-2)
    or a dense dilated ``Conv3x3(C->K)`` (``dense=True``, spec branches 3-4). All convs have biases.

    Args:
        in_channels: C.
        out_channels: K.
        dilation: dilation (and padding) of the 3x3 conv.
        dense: use a dense 3x3 conv instead of grouped 3x3 + 1x1.

    Shapes: ``x: [B, C, H, W] -> [B, K, H, W]``.
    """

    def __init__(self, in_channels: int, out_channels: int, dilation: int, dense: bool) -> None:
        super().__init__()
        if dense:
            first: List[nn.Module] = [
                nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=dilation, dilation=dilation)
            ]
        else:
            first = [
                grouped_conv3x3(in_channels, out_channels, dilation),
                nn.Conv2d(out_channels, out_channels, kernel_size=1),
            ]
        self.first = nn.Sequential(*first, nn.BatchNorm2d(out_channels), nn.ReLU())
        self.second = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.BatchNorm2d(out_channels), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.first(x)
        return a + self.second(a)


class ReASPPFusion(nn.Module):
    """Fusion head of a ReASPP block: ``ReLU(BN(Conv1x1(cat([branch_1, ..., branch_n, x]))))``.

    Args:
        in_channels: C, channels of the block input ``x`` (concatenated last).
        out_channels: K, channels of each branch output and of the result.
        num_branches: number of branch outputs concatenated before ``x``.
        bias: bias of the 1x1 conv (``True`` in the baseline, ``False`` in the shared variant).

    Shapes: branches ``n x [B, K, H, W]`` and ``x: [B, C, H, W]`` -> ``[B, K, H, W]``.
    """

    def __init__(self, in_channels: int, out_channels: int, num_branches: int = 4, bias: bool = True) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(num_branches * out_channels + in_channels, out_channels, kernel_size=1, bias=bias),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, branches: List[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        feats = list(branches)
        feats.append(x)
        return self.conv(torch.cat(feats, dim=1))


class ReASPP3(nn.Module):
    """Baseline RAAGR2-Net encoder block ReASPP3(C->K), ``docs/network.md``

    Four parallel :class:`ReASPPBranch` es on the same input: grouped 3x3 with dilations
    ``grouped_dilations`` (default 1 and 3), then dense 3x3 with ``dense_dilations`` (default 6 and 9),
    fused with the input by :class:`ReASPPFusion`. Parameters: ``10K^2 + 19CK + 47K``.

    Args:
        in_channels: C.
        out_channels: K (a multiple of C, for the grouped convs).
        grouped_dilations: dilations of the grouped-conv branches.
        dense_dilations: dilations of the dense-conv branches.

    Shapes: ``x: [B, C, H, W] -> [B, K, H, W]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        grouped_dilations: Sequence[int] = (1, 3),
        dense_dilations: Sequence[int] = (6, 9),
    ) -> None:
        super().__init__()
        branches = [ReASPPBranch(in_channels, out_channels, d, dense=False) for d in grouped_dilations]
        branches += [ReASPPBranch(in_channels, out_channels, d, dense=True) for d in dense_dilations]
        self.branches = nn.ModuleList(branches)
        self.fuse = ReASPPFusion(in_channels, out_channels, num_branches=len(branches))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs: List[torch.Tensor] = []
        for branch in self.branches:
            outs.append(branch(x))
        return self.fuse(outs, x)
