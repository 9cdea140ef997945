"""Ignite handlers used by the bundle configs: atomic checkpoints, resume, per-case region metrics, progress."""

from .checkpoint import BestModelSaver, FinalModelSaver, ResumeFromCheckpoint, TrainingStateSaver, save_atomic
from .progress import ProgressBarHandler
from .region_metrics_writer import RegionMetricsWriter

__all__ = [
    "BestModelSaver",
    "FinalModelSaver",
    "ProgressBarHandler",
    "RegionMetricsWriter",
    "ResumeFromCheckpoint",
    "TrainingStateSaver",
    "save_atomic",
]
