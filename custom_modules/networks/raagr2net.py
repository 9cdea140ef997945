"""RAAGR2-Net (baseline, 8,911,301 parameters at ``out_channels=5``, ``docs/network.md``) and its weight-shared
variants (``docs/network.md``), selected by ``sharing``."""

from __future__ import annotations

from functools import partial
from typing import Callable, Dict, Sequence

import torch
from torch import nn

from .blocks.attention_gate import AttentionBlock
from .blocks.reaspp import ReASPP3
from .blocks.recurrent import RRCNNBlock
from .blocks.shared_reaspp import PAIRED_DILATION_GROUPS, SharedReASPP3, SpareKernelSharedReASPP3
from .blocks.up_conv import UpConv

__all__ = ["SHARING_MODES", "RAAGR2Net", "check_spatial_shape"]

#: The network has four 2x2 max-pools, so H and W must be multiples of this (default of check_spatial_shape).
SPATIAL_DIVISOR = 16

BlockFactory = Callable[[int, int], nn.Module]

#: Encoder block ``(C, K) -> module`` per ``sharing`` mode (``docs/network.md``).
ENCODER_BLOCKS: Dict[str, BlockFactory] = {
    "none": ReASPP3,
    "depthwise": SharedReASPP3,
    "paired": partial(SharedReASPP3, dilation_groups=PAIRED_DILATION_GROUPS),
    "encoder_decoder": SpareKernelSharedReASPP3,
}

#: Allowed values of ``RAAGR2Net(sharing=...)``.
SHARING_MODES = tuple(ENCODER_BLOCKS)


def check_spatial_shape(x: torch.Tensor, divisor: int = SPATIAL_DIVISOR) -> None:
    """Raise ``ValueError`` unless ``x`` is ``[B, C, H, W]`` with H and W divisible by ``divisor``.

    A plain ``if`` on ``x.shape``: it works under ``torch.jit.script`` (raised as ``torch.jit.Error`` carrying
    the message) and under ``torch.onnx.export(..., dynamo=True)`` with dynamic H/W, where it becomes an
    export-time shape guard. It is not a runtime check of the exported ONNX graph.
    """
    if x.dim() != 4 or x.shape[-2] % divisor != 0 or x.shape[-1] % divisor != 0:
        raise ValueError(
            "RAAGR2Net expects a 4D input [B, C, H, W] with H and W divisible by "
            + str(divisor)
            + " (four 2x2 max-pools), got shape "
            + str(list(x.shape))
            + "."
        )


class RAAGR2Net(nn.Module):
    """RAAGR2-Net 2D brain-tumour segmentation network (PyTorch port of the reference study).

    Encoder: five :class:`ReASPP3` blocks separated by 2x2 max-pools. Decoder (four stages):
    :class:`UpConv` -> :class:`AttentionBlock` on the encoder skip -> concat ``[gated skip, upsampled]``
    -> :class:`RRCNNBlock`. Head: Conv1x1 ``features[0] -> out_channels`` (+ Sigmoid if ``sigmoid``).

    ``sharing`` selects the weight-shared variants of ``docs/network.md`` (parameters at the spec widths,
    ``out_channels=5``); the module names (``enc1`` ... ``dec2``, ``head``) are the same for all of them:

    - ``"none"``: the baseline (8,911,301).
    - ``"depthwise"``: encoder blocks are :class:`SharedReASPP3` with one depthwise kernel for
      dilations 1/3/6/9 (5,046,221).
    - ``"paired"``: two shared kernels per encoder block, for dilations 1/3 and 6/9 (5,051,061).
    - ``"encoder_decoder"``: encoder blocks are :class:`SpareKernelSharedReASPP3` (a shared ReASPP3 plus an
      unused kernel kept for parity with the reference, so DDP needs ``find_unused_parameters=True``) and the
      decoder RRCNN blocks are :class:`SharedReASPP3` ``(2K -> K)`` (6,621,141); ``dropout`` is then unused.

    Args:
        in_channels: input channels (4 MRI modalities).
        out_channels: output channels (5 in the spec; 3 for TC/ET/WT bundles).
        features: channel widths of the five encoder levels (spec: 32, 64, 128, 256, 512). Each level's
            width must be a multiple of the previous one (grouped convs); the first a multiple of ``in_channels``.
        dropout: dropout after the 1x1 projection of each RRCNN block.
        sigmoid: append the spec's element-wise Sigmoid; ``False`` returns logits.
        sharing: one of :data:`SHARING_MODES` (see above).

    Shapes: ``x: [B, in_channels, H, W] -> [B, out_channels, H, W]``, H and W divisible by 16.
    """

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 5,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        dropout: float = 0.2,
        sigmoid: bool = True,
        sharing: str = "none",
    ) -> None:
        super().__init__()
        if len(features) != 5:
            raise ValueError(f"features must have 5 entries, got {tuple(features)}.")
        if sharing not in ENCODER_BLOCKS:
            raise ValueError(f"sharing must be one of {SHARING_MODES}, got {sharing!r}.")
        self.sharing = sharing
        f1, f2, f3, f4, f5 = (int(f) for f in features)
        #: the constructor arguments (JSON-serialisable), e.g. to write this network's ``network_def``
        self.init_args: Dict[str, object] = {
            "in_channels": in_channels,
            "out_channels": out_channels,
            "features": [f1, f2, f3, f4, f5],
            "dropout": dropout,
            "sigmoid": sigmoid,
            "sharing": sharing,
        }
        encoder_block = ENCODER_BLOCKS[sharing]
        decoder_block: BlockFactory = (
            SharedReASPP3 if sharing == "encoder_decoder" else partial(RRCNNBlock, dropout=dropout)
        )

        self.enc1 = encoder_block(in_channels, f1)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.enc2 = encoder_block(f1, f2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.enc3 = encoder_block(f2, f3)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.enc4 = encoder_block(f3, f4)
        self.pool4 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.enc5 = encoder_block(f4, f5)

        self.up5 = UpConv(f5, f4)
        self.att5 = AttentionBlock(f_g=f4, f_l=f4, f_int=f4 // 2)
        self.dec5 = decoder_block(2 * f4, f4)

        self.up4 = UpConv(f4, f3)
        self.att4 = AttentionBlock(f_g=f3, f_l=f3, f_int=f3 // 2)
        self.dec4 = decoder_block(2 * f3, f3)

        self.up3 = UpConv(f3, f2)
        self.att3 = AttentionBlock(f_g=f2, f_l=f2, f_int=f2 // 2)
        self.dec3 = decoder_block(2 * f2, f2)

        self.up2 = UpConv(f2, f1)
        self.att2 = AttentionBlock(f_g=f1, f_l=f1, f_int=f1 // 2)
        self.dec2 = decoder_block(2 * f1, f1)

        self.head = nn.Conv2d(f1, out_channels, kernel_size=1)
        self.out_act: nn.Module = nn.Sigmoid() if sigmoid else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_spatial_shape(x)

        e1 = self.enc1(x)
        e2 = self.enc2(self.pool1(e1))
        e3 = self.enc3(self.pool2(e2))
        e4 = self.enc4(self.pool3(e3))
        e5 = self.enc5(self.pool4(e4))

        d = self.up5(e5)
        d = self.dec5(torch.cat([self.att5(d, e4), d], dim=1))
        d = self.up4(d)
        d = self.dec4(torch.cat([self.att4(d, e3), d], dim=1))
        d = self.up3(d)
        d = self.dec3(torch.cat([self.att3(d, e2), d], dim=1))
        d = self.up2(d)
        d = self.dec2(torch.cat([self.att2(d, e1), d], dim=1))

        return self.out_act(self.head(d))
