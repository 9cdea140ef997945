"""Structural fixes that let Torch-Pruning 1.6.1 prune the *whole* RAAGR2-Net.

Two constructs of the network break plain torch-pruning 1.6.1 (``docs/compression.md``):

1. **Channel-multiplier grouped convs** ``Conv2d(C, m*C, groups=C)`` (ReASPP branches 1-2): torch-pruning
   prunes their input channels as if they were dense (``IndexError`` in ``importance.py``). Fixed
   structurally by :func:`split_grouped_convs`: each becomes :class:`SplitGroupedConv`, ``m`` depthwise
   ``Conv2d(C, C, groups=C)`` whose outputs are concatenated, and the next 1x1 conv's input columns are
   permuted to match. The function is exact (same outputs), and every construct in it is one torch-pruning
   handles: removing input channel ``c`` removes its ``m`` outputs and the matching consumer columns.
2. **``torch.cat`` of pruned branches with the raw network input** (``enc1``'s fusion): the input tensor is
   not a node of the traced graph, so torch-pruning computes no concat offsets and maps every branch's
   pruned channels onto the first branch's slots. Fixed by :func:`fix_untracked_concat_inputs`, which gives
   such concats their full sizes (the untracked tensors trail the concat, as in ``ReASPPFusion``) so that the
   ordinary torch-pruning index mapping applies.
"""

from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.dependency import index_mapping, shape_infer

from ..blocks.shared_reaspp import SharedDepthwiseKernel

__all__ = [
    "SplitGroupedConv",
    "is_multiplier_conv",
    "split_grouped_convs",
    "merge_split_convs",
    "fix_untracked_concat_inputs",
    "shared_kernel_parameters",
    "input_bound_layers",
    "build_dependency_graph",
]


def is_multiplier_conv(module: nn.Module) -> bool:
    """True for ``Conv2d(C, m*C, groups=C)`` with ``m > 1`` (grouped, not depthwise, not dense)."""
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels
        and module.out_channels > module.in_channels
        and module.out_channels % module.in_channels == 0
    )


class SplitGroupedConv(nn.Module):
    """A channel-multiplier conv ``G3(C -> m*C)`` as ``m`` depthwise convs, outputs concatenated slot-major.

    Output channel ``j * C + c`` is slot ``j``'s depthwise conv of input channel ``c`` (the grouped conv's
    channel ``c * m + j``); :func:`split_grouped_convs` permutes the consumer to match.

    Args:
        channels: C.
        multiplier: m.
        kernel_size, padding, dilation, bias: those of the grouped conv.

    Shapes: ``x: [B, C, H, W] -> [B, m*C, H, W]``.
    """

    def __init__(
        self,
        channels: int,
        multiplier: int,
        kernel_size: int = 3,
        padding: int = 1,
        dilation: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.slots = nn.ModuleList(
            [
                nn.Conv2d(
                    channels,
                    channels,
                    kernel_size=kernel_size,
                    padding=padding,
                    dilation=dilation,
                    groups=channels,
                    bias=bias,
                )
                for _ in range(multiplier)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([slot(x) for slot in self.slots], dim=1)

    @classmethod
    def from_grouped(cls, conv: nn.Conv2d) -> Tuple["SplitGroupedConv", List[int]]:
        """The split equivalent of ``conv`` (weights copied) and the column permutation for its consumer:
        ``consumer.weight[:, perm]`` is the consumer weight for the split layout."""
        if not is_multiplier_conv(conv):
            raise ValueError(f"not a channel-multiplier grouped conv: {conv}")
        channels, multiplier = conv.in_channels, conv.out_channels // conv.in_channels
        split = cls(
            channels,
            multiplier,
            kernel_size=conv.kernel_size[0],
            padding=conv.padding[0],
            dilation=conv.dilation[0],
            bias=conv.bias is not None,
        ).to(conv.weight.device, conv.weight.dtype)
        with torch.no_grad():
            for j, slot in enumerate(split.slots):
                slot.weight.copy_(conv.weight[j::multiplier])
                if conv.bias is not None:
                    slot.bias.copy_(conv.bias[j::multiplier])
        perm = [(p % channels) * multiplier + p // channels for p in range(channels * multiplier)]
        return split, perm

    def to_grouped(self) -> Tuple[nn.Conv2d, List[int]]:
        """The equivalent grouped conv ``Conv2d(C, m*C, groups=C)`` (weights copied) and the column order for
        the consumer: ``consumer.weight[:, order]`` is the consumer weight for the grouped layout."""
        slots = list(self.slots)
        first, channels, multiplier = slots[0], slots[0].in_channels, len(slots)
        merged = nn.Conv2d(
            channels,
            channels * multiplier,
            kernel_size=first.kernel_size,
            padding=first.padding,
            dilation=first.dilation,
            groups=channels,
            bias=first.bias is not None,
        ).to(first.weight.device, first.weight.dtype)
        # grouped channel c*m + j is slot j's channel c, i.e. split channel j*C + c
        order = [(k % multiplier) * channels + k // multiplier for k in range(channels * multiplier)]
        with torch.no_grad():
            merged.weight.copy_(torch.cat([slot.weight for slot in slots])[order])
            if first.bias is not None:
                merged.bias.copy_(torch.cat([slot.bias for slot in slots])[order])
        return merged, order


def _replace_before_consumer(
    net: nn.Module, match: Callable[[nn.Module], bool], convert: Callable[[nn.Module], Tuple[nn.Module, List[int]]]
) -> int:
    """Replace, in place, every module of an ``nn.Sequential`` that ``match`` es by ``convert(module)[0]`` and
    reorder the input columns of the dense conv that follows it by ``convert(module)[1]``; returns the count.

    Raises:
        ValueError: a matching module that is not followed by a dense conv in its ``nn.Sequential``.
    """
    count = 0
    for name, module in list(net.named_modules()):
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.children())
        for i, child in enumerate(children):
            if not match(child):
                continue
            consumer = children[i + 1] if i + 1 < len(children) else None
            if not (isinstance(consumer, nn.Conv2d) and consumer.groups == 1):
                raise ValueError(f"{name}.{i}: {type(child).__name__} must be followed by a dense conv")
            with torch.random.fork_rng(devices=[]):  # the new modules' random init is overwritten: keep the RNG
                replacement, order = convert(child)
            with torch.no_grad():
                consumer.weight.copy_(consumer.weight[:, order].clone())
            module[i] = replacement
            count += 1
    return count


def split_grouped_convs(net: nn.Module) -> int:
    """Replace, in place, every multiplier conv that is followed by a dense conv in an ``nn.Sequential``
    (ReASPP branches 1-2) by :class:`SplitGroupedConv`, permuting the consumer's input columns.

    Exact: the network computes the same function afterwards. Returns the number of convs split.
    """
    return _replace_before_consumer(net, is_multiplier_conv, SplitGroupedConv.from_grouped)


def merge_split_convs(net: nn.Module) -> int:
    """The inverse of :func:`split_grouped_convs`, in place: every :class:`SplitGroupedConv` (e.g. after
    pruning, ``m`` slots of ``C'`` channels) becomes one ``Conv2d(C', m*C', groups=C')`` again and its consumer's
    input columns are permuted back. Exact. One grouped conv runs faster than ``m`` depthwise convs and a concat,
    so pruned networks are merged for deployment. Returns the number of convs merged."""
    return _replace_before_consumer(net, lambda m: isinstance(m, SplitGroupedConv), SplitGroupedConv.to_grouped)


def fix_untracked_concat_inputs(graph: tp.DependencyGraph) -> int:
    """Give torch-pruning the full sizes of concats that have untracked (non-graph) trailing inputs.

    ``ReASPPFusion`` concatenates its branches with the block input; in ``enc1`` that input is the raw image,
    which is not part of the traced graph, so torch-pruning leaves the concat without offsets and maps pruned
    channels of every branch onto the first branch. Returns the number of concats fixed.

    Raises:
        ValueError: an untracked input that is not at the end of the concat (its offset would be unknown).
    """
    fixed = 0
    for module, node in graph.module2node.items():
        if node.type != tp.ops.OPTYPE.CONCAT or module.offsets is not None:
            continue
        tracked = [fn is not None for fn, _ in node.grad_fn.next_functions]
        if all(tracked):
            continue
        first_untracked = tracked.index(False)
        if any(tracked[first_untracked:]):
            raise ValueError(f"{node.name}: untracked concat inputs must trail the tracked ones")
        sizes = [shape_infer.infer_channels_between(graph, n, node) for n in node.inputs]
        total = shape_infer.infer_in_channels_recursively(graph, node, recursive_depth=[0])
        if total is None or any(s is None for s in sizes):
            continue
        module.concat_sizes = sizes + [total - sum(sizes)]
        index_mapping.update_concat_index_mapping(graph, node)
        fixed += 1
    return fixed


def shared_kernel_parameters(net: nn.Module) -> List[Tuple[nn.Parameter, int]]:
    """``unwrapped_parameters`` for torch-pruning: every :class:`SharedDepthwiseKernel`'s weight and bias,
    pruned along dim 0 (channels), as the list of ``(param, dim)`` tuples torch-pruning 1.6.1 expects."""
    params: List[Tuple[nn.Parameter, int]] = []
    for module in net.modules():
        if isinstance(module, SharedDepthwiseKernel):
            params += [(module.weight, 0), (module.bias, 0)]
    return params


def input_bound_layers(net: nn.Module, example_inputs: torch.Tensor) -> List[nn.Module]:
    """Depthwise convs applied directly to the network input (``enc1``'s split grouped convs).

    Their output channels are tied one-to-one to the input channels (the MRI modalities), which can never be
    pruned, but torch-pruning would still offer them as group roots; they must be ignored.
    """
    found: List[nn.Module] = []

    def hook(module: nn.Module, args: Tuple[torch.Tensor, ...]) -> None:
        if args and args[0] is example_inputs and module not in found:
            found.append(module)

    handles = [
        m.register_forward_pre_hook(hook)
        for m in net.modules()
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
    ]
    try:
        with torch.no_grad():
            net(example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return found


def build_dependency_graph(
    net: nn.Module, example_inputs: torch.Tensor, ignored_layers: Sequence[nn.Module] = ()
) -> tp.DependencyGraph:
    """A torch-pruning dependency graph of a prunable RAAGR2-Net (after :func:`split_grouped_convs`), with the
    untracked-concat fix applied."""
    graph = tp.DependencyGraph().build_dependency(
        net,
        example_inputs,
        unwrapped_parameters=shared_kernel_parameters(net) or None,
        ignored_layers=list(ignored_layers),
        verbose=False,
    )
    fix_untracked_concat_inputs(graph)
    return graph
