"""Building blocks of RAAGR2-Net (one block per module, in the style of ``monai.networks.blocks``)."""

from .attention_gate import AttentionBlock
from .reaspp import ReASPP3, ReASPPBranch, ReASPPFusion, grouped_conv3x3
from .recurrent import ConvOne, RecurrentBlock, RRCNNBlock
from .shared_reaspp import (
    PAIRED_DILATION_GROUPS,
    SHARED_DILATION_GROUPS,
    SharedDepthwiseKernel,
    SharedReASPP3,
    SharedReASPPBranch,
    SpareKernelSharedReASPP3,
)
from .up_conv import UpConv

__all__ = [
    "PAIRED_DILATION_GROUPS",
    "SHARED_DILATION_GROUPS",
    "AttentionBlock",
    "ConvOne",
    "ReASPP3",
    "ReASPPBranch",
    "ReASPPFusion",
    "RecurrentBlock",
    "RRCNNBlock",
    "SharedDepthwiseKernel",
    "SharedReASPP3",
    "SharedReASPPBranch",
    "SpareKernelSharedReASPP3",
    "UpConv",
    "grouped_conv3x3",
]
