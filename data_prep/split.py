"""Deterministic train/validation/test split and k-fold split **by patient**.

A case id names a scan; :mod:`data_prep.patients` maps it to a patient id. All scans of one patient land in
the same split (or fold), so no model is tested on a patient it was trained on.

Rule for ``n`` patients with fractions ``val`` and ``test``:

- ``n >= 3``: ``round(n * f)`` patients per split, at least 1 for every non-zero fraction, and at
  least 1 training patient (validation is reduced first when they do not fit).
- ``n == 2``: 1 training patient and 1 test patient (validation if ``test == 0``; both training if
  both fractions are 0).
- ``n == 1``: the single patient goes to ``test`` only (it can be evaluated, not trained on).

Patient ids are sorted, shuffled with ``random.Random(seed)``, then the first ``n_test`` go to
``test``, the next ``n_val`` to ``validation``, the rest to ``training``. Each returned list holds the
case ids of its patients, sorted.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping

SPLITS: tuple[str, ...] = ("training", "validation", "test")


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """Number of (training, validation, test) patients for ``n`` patients, see module rule."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"fractions must be >= 0 and sum to < 1, got val={val_fraction}, test={test_fraction}")
    if n <= 1:
        return 0, 0, n
    if n == 2:
        n_test = int(test_fraction > 0)
        n_val = int(val_fraction > 0 and not n_test)
        return 2 - n_val - n_test, n_val, n_test
    n_val = max(round(n * val_fraction), int(val_fraction > 0))
    n_test = max(round(n * test_fraction), int(test_fraction > 0))
    while n_val + n_test > n - 1:
        if n_val >= n_test and n_val > int(val_fraction > 0):
            n_val -= 1
        else:
            n_test -= 1
    return n - n_val - n_test, n_val, n_test


def cases_by_patient(case_patients: Mapping[str, str]) -> dict[str, list[str]]:
    """``{patient_id: sorted case ids}`` of ``{case_id: patient_id}``."""
    groups: dict[str, list[str]] = defaultdict(list)
    for case, patient in case_patients.items():
        groups[patient].append(case)
    return {p: sorted(c) for p, c in sorted(groups.items())}


def split_by_patient(
    case_patients: Mapping[str, str],
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    all_test: bool = False,
) -> dict[str, list[str]]:
    """Split ``{case_id: patient_id}`` into ``{"training": [case ids], "validation": [...], "test": [...]}``."""
    groups = cases_by_patient(case_patients)
    if all_test:
        return {"training": [], "validation": [], "test": sorted(case_patients)}
    patients = list(groups)
    _, n_val, n_test = split_counts(len(patients), val_fraction, test_fraction)
    random.Random(seed).shuffle(patients)
    parts = (patients[n_test + n_val :], patients[n_test : n_test + n_val], patients[:n_test])
    return {name: sorted(c for p in part for c in groups[p]) for name, part in zip(SPLITS, parts)}


def kfold_by_patient(case_patients: Mapping[str, str], k: int, seed: int = 0) -> list[dict[str, list[str]]]:
    """``k`` folds ``{"training": [case ids], "test": [case ids]}``; every patient is tested in exactly one fold.

    Patients are shuffled with ``random.Random(seed)`` and dealt round-robin into ``k`` test groups
    (``k`` = number of patients gives leave-one-patient-out).

    Raises:
        ValueError: ``k < 2`` or more folds than patients.
    """
    groups = cases_by_patient(case_patients)
    if not 2 <= k <= len(groups):
        raise ValueError(f"k-fold needs 2 <= k <= number of patients ({len(groups)}), got k={k}")
    patients = list(groups)
    random.Random(seed).shuffle(patients)
    folds = []
    for i in range(k):
        test = set(patients[i::k])
        folds.append(
            {
                "training": sorted(c for p in patients if p not in test for c in groups[p]),
                "test": sorted(c for p in test for c in groups[p]),
            }
        )
    return folds
