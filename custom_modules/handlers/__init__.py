"""Ignite handlers used by the bundle configs: atomic checkpoints, resume, per-case region metrics, progress."""

from .checkpoint import BestModelSaver, FinalModelSaver, ResumeFromCheckpoint, TrainingStateSaver, save_atomic
from .progress import ProgressBarHandler
from .region_metrics_writer import RegionMetricsWriter
from .run_guard import RunGuard
from .skipped_cases import SkippedCasesReport
from .weights import WeightsLoader, load_state_dict_checked, load_weights

__all__ = [
    "BestModelSaver",
    "FinalModelSaver",
    "ProgressBarHandler",
    "RegionMetricsWriter",
    "ResumeFromCheckpoint",
    "RunGuard",
    "SkippedCasesReport",
    "TrainingStateSaver",
    "WeightsLoader",
    "load_state_dict_checked",
    "load_weights",
    "save_atomic",
]
