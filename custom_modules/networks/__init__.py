"""Networks of raagr2-slim: RAAGR2-Net, its building blocks and complexity helpers."""

from .blocks import (
    AttentionBlock,
    ConvOne,
    ReASPP3,
    ReASPPBranch,
    ReASPPFusion,
    RecurrentBlock,
    RRCNNBlock,
    UpConv,
    grouped_conv3x3,
)
from .complexity import FLOP_COUNTER, checkpoint_size_mib, count_flops, count_parameters
from .raagr2net import RAAGR2Net, check_spatial_shape

__all__ = [
    "AttentionBlock",
    "ConvOne",
    "FLOP_COUNTER",
    "RAAGR2Net",
    "ReASPP3",
    "ReASPPBranch",
    "ReASPPFusion",
    "RecurrentBlock",
    "RRCNNBlock",
    "UpConv",
    "check_spatial_shape",
    "checkpoint_size_mib",
    "count_flops",
    "count_parameters",
    "grouped_conv3x3",
]
