"""Weight-shared ReASPP3 encoder blocks of the shared RAAGR2-Net variants (``docs/network.md``).

One depthwise 3x3 kernel (:class:`SharedDepthwiseKernel`) is applied at several dilations inside a block
(:class:`SharedReASPP3`). ``"depthwise"`` uses one kernel for dilations 1/3/6/9; ``"paired"`` uses two
(1/3 and 6/9). :class:`SpareKernelSharedReASPP3` adds the reference ``EnhancedDLUNet``'s unused kernel.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .reaspp import ReASPPFusion

__all__ = [
    "PAIRED_DILATION_GROUPS",
    "SHARED_DILATION_GROUPS",
    "SharedDepthwiseKernel",
    "SharedReASPPBranch",
    "SharedReASPP3",
    "SpareKernelSharedReASPP3",
]

#: "depthwise": one kernel used at dilations 1, 3, 6 and 9.
SHARED_DILATION_GROUPS = ((1, 3, 6, 9),)
#: "paired": one kernel for dilations 1 and 3, a second one for 6 and 9.
PAIRED_DILATION_GROUPS = ((1, 3), (6, 9))


class SharedDepthwiseKernel(nn.Module):
    """One depthwise 3x3 kernel ``(C, 1, 3, 3)`` plus bias ``(C,)``, applied at a dilation given per call.

    Both tensors are initialised with ``torch.randn`` (standard normal, as in the reference; not the default
    conv init). The conv is functional (``F.conv2d``, ``padding = dilation``, ``groups = x.shape[1]``), so
    ptflops does not see it; :func:`custom_modules.networks.count_flops` does. ``10 C`` parameters.

    Args:
        channels: C.

    Shapes: ``x: [B, C, H, W] -> [B, C, H, W]``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, 1, 3, 3))
        self.bias = nn.Parameter(torch.randn(channels))

    def forward(self, x: torch.Tensor, dilation: int) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, padding=dilation, dilation=dilation, groups=x.shape[1])


class SharedReASPPBranch(nn.Module):
    """One branch of the shared ReASPP3 on a depthwise output ``d``: ``ReLU(BN(PW(d))) + RES(d)``.

    ``PW`` is a Conv1x1 C->K with bias, ``RES`` a Conv1x1 C->K without bias. ``2CK + 3K`` parameters.

    Args:
        in_channels: C.
        out_channels: K.

    Shapes: ``d: [B, C, H, W] -> [B, K, H, W]``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pointwise = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1), nn.BatchNorm2d(out_channels), nn.ReLU()
        )
        self.residual = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        return self.pointwise(d) + self.residual(d)


class SharedReASPP3(nn.Module):
    """Shared-depthwise ReASPP3(C->K), ``docs/network.md``

    Each :class:`SharedDepthwiseKernel` in ``kernels`` is applied at the dilations of its group in
    ``dilation_groups``; branch ``i`` (:class:`SharedReASPPBranch`) takes the ``i``-th depthwise output in
    that flattened order. The branches and the input are fused by :class:`ReASPPFusion` with a bias-free
    1x1 conv. With ``n`` kernels and 4 branches: ``10nC + 9CK + 4K^2 + 14K`` parameters
    (``n = 1``: "depthwise", ``n = 2``: "paired"). Each kernel is a single Parameter owned by this block only.

    Args:
        in_channels: C.
        out_channels: K.
        dilation_groups: dilations per shared kernel (one kernel per group), e.g. ``((1, 3, 6, 9),)``.

    Shapes: ``x: [B, C, H, W] -> [B, K, H, W]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dilation_groups: Sequence[Sequence[int]] = SHARED_DILATION_GROUPS,
    ) -> None:
        super().__init__()
        self.dilation_groups = [[int(d) for d in group] for group in dilation_groups]
        num_branches = sum(len(group) for group in self.dilation_groups)
        if num_branches == 0 or any(len(group) == 0 for group in self.dilation_groups):
            raise ValueError(f"dilation_groups must be non-empty groups of dilations, got {dilation_groups}.")
        self.kernels = nn.ModuleList([SharedDepthwiseKernel(in_channels) for _ in self.dilation_groups])
        self.branches = nn.ModuleList([SharedReASPPBranch(in_channels, out_channels) for _ in range(num_branches)])
        self.fuse = ReASPPFusion(in_channels, out_channels, num_branches=num_branches, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        depthwise: List[torch.Tensor] = []
        for j, kernel in enumerate(self.kernels):
            for dilation in self.dilation_groups[j]:
                depthwise.append(kernel(x, dilation))
        outs: List[torch.Tensor] = []
        for i, branch in enumerate(self.branches):
            outs.append(branch(depthwise[i]))
        return self.fuse(outs, x)


class SpareKernelSharedReASPP3(nn.Module):
    """Encoder block of the "encoder_decoder" variant: a :class:`SharedReASPP3` plus an *unused* kernel.

    The reference ``EnhancedDLUNet`` holds an extra ``(C, 1, 3, 3)`` kernel and ``(C,)`` bias per encoder
    block that its forward never uses. It is kept (``spare``, counted: ``+10C`` parameters) only for
    parameter parity with the reference (6,621,141 in total). It never receives a gradient, so
    ``DistributedDataParallel`` needs ``find_unused_parameters=True`` for this variant.

    Args:
        in_channels: C.
        out_channels: K.

    Shapes: ``x: [B, C, H, W] -> [B, K, H, W]``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = SharedReASPP3(in_channels, out_channels)
        self.spare = SharedDepthwiseKernel(in_channels)  # unused in forward; parameter parity only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)
