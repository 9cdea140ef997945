"""Rebuild a pruned network from JSON-serialisable data: the ``network_def`` of pruned bundles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence, Union

from torch import nn

from ..complexity import probe_input
from .structure import build_dependency_graph, merge_split_convs, split_grouped_convs

__all__ = ["pruned_network", "load_pruning_history"]


def load_pruning_history(path: Union[str, Path]) -> list:
    """Read a pruning history JSON file (a list of ``[module_name, is_out_channels, indices]``).

    Raises:
        ValueError: naming the file when it is missing or not a pruning history.
    """
    path = Path(path)
    try:
        history = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} not found: a pruned bundle needs its pruning history") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(history, list) or not all(isinstance(h, list) and len(h) == 3 for h in history):
        raise ValueError(f"{path} is not a pruning history (a list of [module_name, is_out_channels, indices])")
    return history


def pruned_network(
    network: nn.Module,
    pruning_history: Union[str, Path, Sequence[Any]],
    example_shape: Sequence[int] = (1, 4, 64, 64),
) -> nn.Module:
    """``network`` (freshly built, unpruned) reshaped in place to a pruned architecture and returned.

    The channel-multiplier convs are split as during pruning, torch-pruning replays ``pruning_history`` (a
    list, or the path of its JSON file) on the dependency graph, and the split convs are merged back into
    grouped convs (:func:`merge_split_convs`, the deployed form). Load the pruned ``state_dict`` afterwards
    (``torch.load(..., weights_only=True)`` works: no pickled modules are involved).
    """
    history = (
        load_pruning_history(pruning_history) if isinstance(pruning_history, (str, Path)) else list(pruning_history)
    )
    split_grouped_convs(network)
    if history:
        device = next(network.parameters()).device
        was_training = network.training
        graph = build_dependency_graph(network, probe_input(example_shape, device))
        graph.load_pruning_history(history)
        network.train(was_training)
    merge_split_convs(network)
    return network
