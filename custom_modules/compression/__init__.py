"""Structured compression of RAAGR2-Net on Torch-Pruning: structural fixes, criteria, schedules, the pruning
engine, unstructured SNIP, knowledge distillation, the rebuild of pruned networks and the bundle workflow."""

from .criteria import METHODS, Criterion, LRPImportance, SlimmingRegularizer, get_criterion, make_importance, pruner_class
from .distillation import KnowledgeDistillationLoss
from .engine import ALLOCATIONS, PruningCheckError, StructuredPruner, onnx_parity, reset_optimizer
from .rebuild import load_pruning_history, pruned_network
from .schedule import LAYER_GROUPS, SCHEDULES, PruningStep, make_schedule
from .snip import MaskEnforcer, apply_masks, count_masked_zeros, iterative_snip_masks, snip_masks, snip_saliency
from .structure import (
    SplitGroupedConv,
    build_dependency_graph,
    fix_untracked_concat_inputs,
    merge_split_convs,
    split_grouped_convs,
)
from .workflow import VARIANTS, CompressionWorkflow, load_teacher_state, pruned_bundle_name, variant_sharing

__all__ = [
    "ALLOCATIONS",
    "LAYER_GROUPS",
    "METHODS",
    "SCHEDULES",
    "VARIANTS",
    "CompressionWorkflow",
    "Criterion",
    "KnowledgeDistillationLoss",
    "LRPImportance",
    "MaskEnforcer",
    "PruningCheckError",
    "PruningStep",
    "SlimmingRegularizer",
    "SplitGroupedConv",
    "StructuredPruner",
    "apply_masks",
    "build_dependency_graph",
    "count_masked_zeros",
    "fix_untracked_concat_inputs",
    "get_criterion",
    "iterative_snip_masks",
    "load_pruning_history",
    "load_teacher_state",
    "make_importance",
    "make_schedule",
    "merge_split_convs",
    "onnx_parity",
    "pruned_bundle_name",
    "pruned_network",
    "pruner_class",
    "reset_optimizer",
    "snip_masks",
    "snip_saliency",
    "split_grouped_convs",
    "variant_sharing",
]
