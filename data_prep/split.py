"""Deterministic train/validation/test split by patient (case id).

Rule for ``n`` cases with fractions ``val`` and ``test``:

- ``n >= 3``: ``round(n * f)`` cases per split, at least 1 for every non-zero fraction, and at
  least 1 training case (validation is reduced first when they do not fit).
- ``n == 2``: 1 training case and 1 test case (validation if ``test == 0``; both training if
  both fractions are 0).
- ``n == 1``: the single case goes to ``test`` only (it can be evaluated, not trained on).

Case ids are sorted, shuffled with ``random.Random(seed)``, then the first ``n_test`` go to
``test``, the next ``n_val`` to ``validation``, the rest to ``training``. A case is never in two
splits. Each list is returned sorted.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

SPLITS: tuple[str, ...] = ("training", "validation", "test")


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """Number of (training, validation, test) cases for ``n`` cases, see module rule."""
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


def split_by_case(
    case_ids: Iterable[str],
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    all_test: bool = False,
) -> dict[str, list[str]]:
    """Split distinct case ids into ``{"training": [...], "validation": [...], "test": [...]}``."""
    ids = sorted(set(case_ids))
    if all_test:
        return {"training": [], "validation": [], "test": ids}
    _, n_val, n_test = split_counts(len(ids), val_fraction, test_fraction)
    random.Random(seed).shuffle(ids)
    parts = (ids[n_test + n_val :], ids[n_test : n_test + n_val], ids[:n_test])
    return {name: sorted(part) for name, part in zip(SPLITS, parts)}
