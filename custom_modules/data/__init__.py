"""Loading datalists for the bundles, and skipping bad cases, with errors that name the file and the problem."""

from .datalist import Datalist, DatalistError, load_datalist
from .screening import SKIPPED_KEY, CaseDataLoader, ScreenedCompose, skip_record, skipping_collate

__all__ = [
    "SKIPPED_KEY",
    "CaseDataLoader",
    "Datalist",
    "DatalistError",
    "ScreenedCompose",
    "load_datalist",
    "skip_record",
    "skipping_collate",
]
