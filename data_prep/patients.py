"""Patient id of each case, so that splits group scans of one patient.

A case id names a *scan*. Some layouts hold several scans of one patient:

- ``upenn_gbm``: ``UPENN-GBM-00003_11`` and ``UPENN-GBM-00003_21`` are two scans (pre- and post-operative) of
  patient ``UPENN-GBM-00003``: the ``_<digits>`` scan suffix is dropped.
- ``brats2023``: ``BraTS-GLI-00001-000`` and ``BraTS-GLI-00001-001`` are two timepoints of patient
  ``BraTS-GLI-00001``: the ``-<3 digits>`` timepoint suffix is dropped.
- every other layout (BraTS 2018-2021, MSD, BrainLes, phantoms) has one scan per patient: the patient id is
  the case id.

Where these rules do not hold (e.g. BraTS 2021 ids that hide repeat scans), an explicit CSV maps case ids to
patient ids; it wins over the rules for the cases it lists (``case_id,patient_id`` header, one row per case).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping
from pathlib import Path

#: layout -> regular expression whose group ``patient`` is the patient id; layouts not listed: identity
PATIENT_ID_RULES: dict[str, re.Pattern[str]] = {
    "upenn_gbm": re.compile(r"^(?P<patient>.+?)_\d+$"),
    "brats2023": re.compile(r"^(?P<patient>.+?)-\d{3}$"),
}
CSV_COLUMNS: tuple[str, str] = ("case_id", "patient_id")


def patient_id(case_id: str, layout: str) -> str:
    """Patient id of ``case_id`` found in ``layout`` by :data:`PATIENT_ID_RULES` (identity when none applies)."""
    rule = PATIENT_ID_RULES.get(layout)
    match = rule.match(case_id) if rule else None
    return match.group("patient") if match else case_id


def read_patient_csv(path: str | os.PathLike) -> dict[str, str]:
    """``{case_id: patient_id}`` from a CSV with the header ``case_id,patient_id``.

    Raises:
        ValueError: naming the file (and line) when it is missing, cannot be read as UTF-8 CSV, lacks the
            columns, has an empty cell, or maps one case to two patients.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"patient CSV {path} " + ("is a folder, not a file" if path.is_dir() else "not found"))
    try:
        return _read_patient_rows(path)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        detail = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}"
        raise ValueError(f"patient CSV {path}: cannot be read as UTF-8 CSV ({detail})") from e


def _read_patient_rows(path: Path) -> dict[str, str]:
    """The rows of :func:`read_patient_csv` (which names the file in every error)."""
    mapping: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not set(CSV_COLUMNS) <= set(reader.fieldnames):
            raise ValueError(f"patient CSV {path}: header must name {', '.join(CSV_COLUMNS)}, got {reader.fieldnames}")
        for row in reader:
            case, patient = (row[c].strip() if row[c] else "" for c in CSV_COLUMNS)
            if not case or not patient:
                raise ValueError(f"patient CSV {path}, line {reader.line_num}: empty case_id or patient_id")
            if mapping.get(case, patient) != patient:
                raise ValueError(
                    f"patient CSV {path}, line {reader.line_num}: case {case} mapped to both "
                    f"{mapping[case]} and {patient}"
                )
            mapping[case] = patient
    return mapping


def assign_patients(case_layouts: Mapping[str, str], overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{case_id: patient_id}`` for ``{case_id: layout}``: the CSV ``overrides`` first, else the layout rule."""
    overrides = overrides or {}
    return {case: overrides.get(case) or patient_id(case, layout) for case, layout in case_layouts.items()}
