"""Networks of raagr2-slim: RAAGR2-Net (blocks in :mod:`.blocks`) and complexity helpers."""

from .complexity import FLOP_COUNTER, checkpoint_size_mib, count_flops, count_parameters
from .raagr2net import RAAGR2Net, check_spatial_shape

__all__ = ["FLOP_COUNTER", "RAAGR2Net", "check_spatial_shape", "checkpoint_size_mib", "count_flops", "count_parameters"]
