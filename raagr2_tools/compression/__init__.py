"""Structured compression of RAAGR2-Net on Torch-Pruning: criteria, schedules, the pruning engine, unstructured
SNIP, knowledge distillation, the plain-PyTorch compression loop and the MONAI step that writes pruned bundles.

Layers: :mod:`.loop` (plain PyTorch: score, prune, fine-tune callback, evaluate callback, resume record) is
driven by :mod:`.step` (the MONAI glue named by ``compress.json``) or by any other caller, e.g. a test with a
one-step fine-tune. The graph surgery the pruned networks are rebuilt with is in the runtime layer
(:mod:`custom_modules.networks.pruned`).
"""

from .bundle_writer import pruned_bundle_name, write_pruned_bundle
from .criteria import (
    METHODS,
    Criterion,
    LayerScoreImportance,
    SlimmingRegularizer,
    get_criterion,
    make_importance,
    pruner_class,
)
from .distillation import KnowledgeDistillationLoss
from .engine import ALLOCATIONS, PruningCheckError, StructuredPruner, reset_optimizer
from .hooks import TrainingHooks
from .loop import CompressionLoop, CompressionOutcome, LoopCallbacks
from .progress import ProgressStore
from .schedule import LAYER_GROUPS, SCHEDULES, PruningStep, make_schedule
from .settings import FineTuneSettings, PruningSettings, ReportSettings
from .snip import MaskEnforcer, apply_masks, count_masked_zeros, iterative_snip_masks, snip_masks, snip_saliency
from .step import CompressionStep, attach_training_hooks
from .teacher import finetune_loss, load_teacher, load_teacher_state

__all__ = [
    "ALLOCATIONS",
    "LAYER_GROUPS",
    "METHODS",
    "SCHEDULES",
    "CompressionLoop",
    "CompressionOutcome",
    "CompressionStep",
    "Criterion",
    "FineTuneSettings",
    "KnowledgeDistillationLoss",
    "LayerScoreImportance",
    "LoopCallbacks",
    "MaskEnforcer",
    "ProgressStore",
    "PruningCheckError",
    "PruningSettings",
    "PruningStep",
    "ReportSettings",
    "SlimmingRegularizer",
    "StructuredPruner",
    "TrainingHooks",
    "apply_masks",
    "attach_training_hooks",
    "count_masked_zeros",
    "finetune_loss",
    "get_criterion",
    "iterative_snip_masks",
    "load_teacher",
    "load_teacher_state",
    "make_importance",
    "make_schedule",
    "pruned_bundle_name",
    "pruner_class",
    "reset_optimizer",
    "snip_masks",
    "snip_saliency",
    "write_pruned_bundle",
]
