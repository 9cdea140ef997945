"""Loading datalists for the bundles, skipping bad cases with errors that name the file and the problem, and
caching the deterministic part of a case's preprocessing once on disk."""

from .case_cache import CaseCacheDataset, cache_safe_globals, file_stamps, stamped_hash
from .datalist import Datalist, DatalistError, load_datalist
from .datasets import case_dataset
from .one_case import case_id_from_files, inference_cases
from .screening import SKIPPED_KEY, CaseDataLoader, ScreenedCompose, skip_record, skipping_collate

__all__ = [
    "SKIPPED_KEY",
    "CaseCacheDataset",
    "CaseDataLoader",
    "Datalist",
    "DatalistError",
    "ScreenedCompose",
    "cache_safe_globals",
    "case_dataset",
    "case_id_from_files",
    "file_stamps",
    "inference_cases",
    "load_datalist",
    "skip_record",
    "skipping_collate",
    "stamped_hash",
]
