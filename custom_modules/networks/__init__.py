"""Networks of raagr2-slim: RAAGR2-Net and its weight-shared variants (blocks in :mod:`.blocks`), complexity
helpers, the bundle variants by name; pruned networks are rebuilt by :mod:`.pruned`."""

from .autocast import cpu_autocast, cpu_supports_bf16, without_cpu_autocast
from .complexity import FLOP_COUNTER, checkpoint_size_mib, count_flops, count_parameters, slice_latency_ms
from .raagr2net import SHARING_MODES, RAAGR2Net, check_spatial_shape
from .variants import VARIANTS, variant_sharing

__all__ = [
    "FLOP_COUNTER",
    "SHARING_MODES",
    "RAAGR2Net",
    "check_spatial_shape",
    "cpu_autocast",
    "without_cpu_autocast",
    "cpu_supports_bf16",
    "checkpoint_size_mib",
    "count_flops",
    "count_parameters",
    "slice_latency_ms",
    "VARIANTS",
    "variant_sharing",
]
