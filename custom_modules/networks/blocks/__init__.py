"""Building blocks of RAAGR2-Net (one block per module, in the style of ``monai.networks.blocks``)."""

from .attention_gate import AttentionBlock
from .reaspp import ReASPP3, ReASPPBranch, ReASPPFusion, grouped_conv3x3
from .recurrent import ConvOne, RecurrentBlock, RRCNNBlock
from .up_conv import UpConv

__all__ = [
    "AttentionBlock",
    "ConvOne",
    "ReASPP3",
    "ReASPPBranch",
    "ReASPPFusion",
    "RecurrentBlock",
    "RRCNNBlock",
    "UpConv",
    "grouped_conv3x3",
]
