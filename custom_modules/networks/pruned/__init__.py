"""Pruned RAAGR2-Nets: the graph surgery that makes them prunable and their rebuild from a pruning history.

:func:`pruned_network` is the ``network_def`` of every pruned-N% bundle; :mod:`.structure` holds the exact,
structural fixes (split and merge of channel-multiplier grouped convs, the untracked input concat) that both
the rebuild and the compression tooling apply on Torch-Pruning's dependency graph.
"""

from .rebuild import load_pruning_history, pruned_network
from .structure import (
    SplitGroupedConv,
    build_dependency_graph,
    fix_untracked_concat_inputs,
    merge_split_convs,
    split_grouped_convs,
)

__all__ = [
    "SplitGroupedConv",
    "build_dependency_graph",
    "fix_untracked_concat_inputs",
    "load_pruning_history",
    "merge_split_convs",
    "pruned_network",
    "split_grouped_convs",
]
