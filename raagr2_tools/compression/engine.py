"""The structured pruning engine: Torch-Pruning's dependency graph on the whole RAAGR2-Net.

:class:`StructuredPruner` owns the RAAGR2-specific parts (``docs/compression.md``): the structural
fixes of :mod:`.structure`, the layers never pruned (the output head; depthwise convs bound to the input
image), the shared-depthwise kernels as unwrapped parameters (one owner, run-time ``groups``, so nothing can
go stale), the per-step ratios of a schedule, and a forward + ONNX Runtime parity check after every step.
The network is pruned *in place*: modules keep their identity, so optimisers and trainers that hold the
network stay valid once their parameter lists are reset (:func:`reset_optimizer`).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch_pruning as tp
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from custom_modules.networks.blocks.shared_reaspp import SharedDepthwiseKernel
from custom_modules.networks.complexity import count_flops, count_parameters, probe_input
from custom_modules.networks.pruned.structure import (
    SplitGroupedConv,
    build_dependency_graph,
    fix_untracked_concat_inputs,
    input_bound_layers,
    shared_kernel_parameters,
    split_grouped_convs,
)
from raagr2_tools.shipping.onnx import OnnxParityError, onnx_parity

from .schedule import LAYER_GROUPS, PruningStep

__all__ = ["ALLOCATIONS", "PruningCheckError", "StructuredPruner", "reset_optimizer"]

logger = logging.getLogger(__name__)

#: ``allocation`` values: the same ratio in every layer, or one ranking across layers with a per-layer cap.
ALLOCATIONS = ("uniform", "global")


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


class PruningCheckError(RuntimeError):
    """A pruned network failed its forward or ONNX parity check."""


def reset_optimizer(optimizer: torch.optim.Optimizer, network: nn.Module) -> None:
    """Point ``optimizer`` (in place, same object) at ``network``'s current parameters and drop its state.

    Pruning replaces parameter tensors; schedulers and handlers that hold the optimizer keep working.
    """
    optimizer.state.clear()
    optimizer.param_groups = optimizer.param_groups[:1]
    optimizer.param_groups[0]["params"] = [p for p in network.parameters() if p.requires_grad]


class StructuredPruner:
    """Physically remove channels from a RAAGR2-Net (any sharing mode), step by step.

    On construction the network's channel-multiplier convs are split (exact, see
    :mod:`custom_modules.networks.pruned.structure`); load
    teacher weights *before* constructing this. Each :meth:`step` builds a torch-pruning pruner for the
    current network (so any criterion, pruner class and schedule compose), prunes, appends to
    :attr:`history` (torch-pruning's JSON-serialisable pruning history, replayable by
    :func:`custom_modules.networks.pruned.pruned_network`) and checks the result.

    Args:
        network: the network to prune in place.
        example_shape: input shape of the forward check and the FLOP count, ``(1, 4, H, W)``.
        never_prune: names of modules whose output channels are never pruned (the output head).
        allocation: ``"uniform"`` (every layer loses the same fraction of its teacher channels) or
            ``"global"`` (one ranking across layers; no layer loses more than ``max_layer_ratio`` per step).
        max_layer_ratio: per-layer cap of the global allocation.
        round_to: keep channel counts multiples of this (``None``: any count).
        onnx_check: run the ONNX Runtime parity check after each step (the forward check always runs).
        onnx_exporter: exporter of that check (:data:`raagr2_tools.shipping.onnx.EXPORTERS`; the fast
            TorchScript exporter by default, the compression step checks the shipped dynamo graph at the end).
        check_shape: input shape of the ONNX parity check (default ``(1, C, 64, 64)``).
        trace_shape: input shape of the traces that build the dependency graph (default ``(1, C, 32, 32)``:
            only channels matter).
        group_ratios: per-group targets, ``{root conv name: fraction of its teacher channels removed}`` (a searched
            allocation, :mod:`.rl_search`; see :meth:`prunable_groups`); when given, each step prunes every group
            to ``group_ratios[root] * step.target_ratio / final_ratio`` of the way (``final_ratio``: the schedule's
            last target) and ``allocation`` is not used; groups not named keep their channels.
        final_ratio: the schedule's last ``target_ratio`` (the ratio at which ``group_ratios`` are reached).
    """

    def __init__(
        self,
        network: nn.Module,
        example_shape: Sequence[int] = (1, 4, 192, 192),
        never_prune: Sequence[str] = ("head",),
        allocation: str = "uniform",
        max_layer_ratio: float = 0.8,
        round_to: Optional[int] = None,
        onnx_check: bool = True,
        onnx_exporter: str = "torchscript",
        check_shape: Optional[Sequence[int]] = None,
        trace_shape: Optional[Sequence[int]] = None,
        group_ratios: Optional[Dict[str, float]] = None,
        final_ratio: Optional[float] = None,
    ) -> None:
        if allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
        self.network = network
        self.example_shape = tuple(int(s) for s in example_shape)
        self.never_prune = tuple(never_prune)
        self.allocation = allocation
        self.group_ratios = {str(k): float(v) for k, v in group_ratios.items()} if group_ratios is not None else None
        if self.group_ratios is not None:
            bad = {k: v for k, v in self.group_ratios.items() if not 0.0 <= v < 1.0}
            if bad:
                raise ValueError(f"group_ratios must lie in [0, 1): {bad}")
        self.final_ratio = float(final_ratio) if final_ratio else None
        self.max_layer_ratio = float(max_layer_ratio)
        self.round_to = round_to
        self.onnx_check = onnx_check
        self.onnx_exporter = onnx_exporter
        channels = self.example_shape[1]
        self.check_shape = tuple(int(s) for s in (check_shape or (1, channels, 64, 64)))
        self.trace_shape = tuple(int(s) for s in (trace_shape or (1, channels, 32, 32)))
        split_grouped_convs(network)
        modules = dict(network.named_modules())
        #: never pruned: the named modules and the depthwise convs bound to the input image
        self.frozen: List[nn.Module] = [modules[name] for name in self.never_prune] + input_bound_layers(
            network, self._example()
        )
        self.history: List[Any] = []
        self.teacher_out_channels: Dict[str, int] = {
            name: m.out_channels for name, m in network.named_modules() if isinstance(m, nn.Conv2d)
        }
        self.teacher_kernel_channels: Dict[str, int] = {
            name: int(m.weight.shape[0]) for name, m in network.named_modules() if isinstance(m, SharedDepthwiseKernel)
        }
        self.teacher_params = count_parameters(network)
        self.teacher_flops = count_flops(network, self.example_shape, device=self._device())

    def _device(self) -> torch.device:
        return next(self.network.parameters()).device

    def _example(self) -> torch.Tensor:
        """Input for tracing the dependency graph (channel dependencies do not depend on H and W)."""
        return probe_input(self.trace_shape, self._device())

    def _relative_ratio(self, name: str, module: nn.Conv2d, target_ratio: float) -> float:
        """Ratio of ``module``'s *current* channels to remove so that ``target_ratio`` of its teacher channels
        are gone."""
        keep = (1.0 - target_ratio) * self.teacher_out_channels[name]
        return max(0.0, 1.0 - keep / module.out_channels)

    def make_pruner(
        self,
        importance: tp.importance.Importance,
        target_ratio: float = 0.0,
        layer_group: Optional[str] = None,
        pruner_class: type = tp.pruner.BasePruner,
        **kwargs: Any,
    ) -> tp.pruner.BasePruner:
        """A torch-pruning pruner for the current network with the RAAGR2 fixes applied (also used by the
        slimming regulariser, which only needs ``regularize``)."""
        example = self._example()
        frozen_ids = {id(m) for f in self.frozen for m in f.modules()}
        active = LAYER_GROUPS[layer_group] if layer_group is not None else None
        roots = [
            (name, m)
            for name, m in self.network.named_modules()
            if isinstance(m, nn.Conv2d)
            and id(m) not in frozen_ids
            and (active is None or (name.split(".")[0] in active and not _is_depthwise(m)))
        ]
        # A depthwise conv's channels are its producer's: in a layer-wise step it follows the producer's level.
        # Layers outside the active group are not *ignored* (that would also freeze every group that merely
        # touches them, e.g. enc1's output feeds enc2); their groups get ratio 0 instead.
        options: Dict[str, Any] = dict(
            ignored_layers=self.frozen,
            unwrapped_parameters=shared_kernel_parameters(self.network) or None,
            round_to=self.round_to,
            pruning_ratio=0.0,
        )
        if self.group_ratios is not None:
            scale = target_ratio / self.final_ratio if self.final_ratio else 1.0
            unknown = sorted(set(self.group_ratios) - {n for n, _ in roots})
            if unknown and active is None:
                raise ValueError(f"group_ratios name layers that are not prunable roots: {unknown[:5]}")
            options.update(
                pruning_ratio_dict={
                    m: self._relative_ratio(n, m, min(1.0, scale) * self.group_ratios.get(n, 0.0)) for n, m in roots
                },
                global_pruning=False,
            )
        elif self.allocation == "uniform":
            options.update(
                pruning_ratio_dict={m: self._relative_ratio(n, m, target_ratio) for n, m in roots},
                global_pruning=False,
            )
        else:
            teacher = sum(self.teacher_out_channels[n] for n, _ in roots)
            current = sum(m.out_channels for _, m in roots)
            ratio = max(0.0, 1.0 - (1.0 - target_ratio) * teacher / current) if current else 0.0
            scope = (
                {"pruning_ratio": ratio}
                if active is None
                else {"pruning_ratio_dict": {tuple(m for _, m in roots): ratio}}
            )
            options.update(scope, global_pruning=True, max_pruning_ratio=self.max_layer_ratio)
        options.update(kwargs)
        pruner = pruner_class(self.network, example, importance=importance, **options)
        fix_untracked_concat_inputs(pruner.DG)
        return pruner

    def step(
        self,
        importance: tp.importance.Importance,
        step: PruningStep,
        pruner_class: type = tp.pruner.BasePruner,
    ) -> Dict[str, Any]:
        """Prune to ``step``'s target with ``importance``; returns the step record (params, FLOPs, parity).

        Raises:
            PruningCheckError: the pruned network's forward fails or differs from its ONNX export.
        """
        was_training = self.network.training
        pruner = self.make_pruner(importance, step.target_ratio, step.layer_group, pruner_class)
        pruner.step()
        self.history += pruner.pruning_history()
        self.network.train(was_training)
        record = step.as_dict()
        record.update(self.check())
        logger.info(
            f"pruning step {step.index} ({record['layers']}, target ratio {step.target_ratio:.3f}): "
            f"{record['params']:,} params, {record['flops'] / 1e9:.2f} GFLOPs"
        )
        return record

    def prunable_groups(self) -> List[Dict[str, Any]]:
        """The torch-pruning groups of the current network, one per independent choice of channels: the root conv's
        name (the key of ``group_ratios``), its teacher and current output channels, and the convs whose channels
        move with it (coupled channels, reused modules and shared kernels stay in one group), in graph order."""
        pruner = self.make_pruner(tp.importance.GroupMagnitudeImportance(p=2), 0.0)
        names = {m: n for n, m in self.network.named_modules()}
        groups = []
        for group in pruner.DG.get_all_groups(
            ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
        ):
            root = group[0].dep.target.module
            members = sorted({names[d.target.module] for d, _ in group if isinstance(d.target.module, nn.Conv2d)})
            groups.append(
                {
                    "root": names[root],
                    "teacher_channels": self.teacher_out_channels[names[root]],
                    "channels": int(root.out_channels),
                    "members": members,
                }
            )
        return groups

    def replay(self, history: Sequence[Any]) -> None:
        """Re-apply a pruning history recorded by an earlier run of this pruner (resume)."""
        graph = build_dependency_graph(self.network, self._example())
        graph.load_pruning_history(list(history))
        self.history += list(history)

    def check(self) -> Dict[str, Any]:
        """Forward (shape) check at ``example_shape`` with the FLOP count of that same pass, parameter count,
        and (if enabled) ONNX Runtime parity at ``check_shape`` (dynamic H/W, so a small input proves the
        exported graph while keeping the check cheap)."""
        was_training = self.network.training
        self.network.eval()
        example = probe_input(self.example_shape, self._device())
        counter = FlopCounterMode(display=False)
        try:
            with torch.no_grad(), counter:
                out = self.network(example)
        except Exception as e:  # a broken graph surfaces here first
            raise PruningCheckError(f"forward pass of the pruned network failed: {e}") from e
        if out.shape[0] != example.shape[0] or out.shape[2:] != example.shape[2:]:
            raise PruningCheckError(f"pruned network maps {tuple(example.shape)} to {tuple(out.shape)}")
        record: Dict[str, Any] = {"params": count_parameters(self.network), "flops": int(counter.get_total_flops())}
        if self.onnx_check:
            device = self._device()
            try:
                record["onnx_max_abs_diff"] = onnx_parity(
                    self.network.to("cpu"), self.check_shape, exporter=self.onnx_exporter
                )
            except OnnxParityError as e:
                raise PruningCheckError(str(e)) from e
            finally:
                self.network.to(device)
        self.network.train(was_training)
        return record

    def layer_channels(self) -> List[Dict[str, Any]]:
        """Per conv layer: name, type, teacher output channels and kept output channels. A split
        channel-multiplier conv is reported as one ``GroupedConv2d`` (all its slots together)."""
        rows: List[Dict[str, Any]] = []
        split = {name: m for name, m in self.network.named_modules() if isinstance(m, SplitGroupedConv)}
        for name, m in self.network.named_modules():
            if name in split:
                slots = [f"{name}.slots.{i}" for i in range(len(m.slots))]
                rows.append(
                    {
                        "name": name,
                        "type": "GroupedConv2d",
                        "teacher_out_channels": sum(self.teacher_out_channels[s] for s in slots),
                        "kept_out_channels": sum(slot.out_channels for slot in m.slots),
                    }
                )
            elif (
                isinstance(m, nn.Conv2d)
                and name in self.teacher_out_channels
                and name.rsplit(".slots.", 1)[0] not in split
            ):
                kind = "DepthwiseConv2d" if m.groups == m.in_channels and m.groups > 1 else "Conv2d"
                rows.append(
                    {
                        "name": name,
                        "type": kind,
                        "teacher_out_channels": self.teacher_out_channels[name],
                        "kept_out_channels": m.out_channels,
                    }
                )
        for name, m in self.network.named_modules():
            if isinstance(m, SharedDepthwiseKernel):
                rows.append(
                    {
                        "name": name,
                        "type": "SharedDepthwiseKernel",
                        "teacher_out_channels": self.teacher_kernel_channels[name],
                        "kept_out_channels": int(m.weight.shape[0]),
                    }
                )
        return rows
