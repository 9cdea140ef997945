"""``load_decathlon_datalist`` with checks first, so a bad datalist fails with one clear sentence."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from monai.data import load_decathlon_datalist

from ..transforms.load_case import entry_files
from .screening import SKIPPED_KEY

logger = logging.getLogger(__name__)
#: what :func:`load_datalist` does with a case whose files are missing or whose case id repeats
ON_BAD_CASE = ("raise", "skip")


class DatalistError(ValueError):
    """A datalist or a file it names is missing or malformed; the message names the file and the problem."""


class Datalist(list):
    """The entries of a datalist list; :attr:`skipped` holds ``{"case_id", "skipped_reason"}`` of the cases left
    out (``monai.data.Dataset`` keeps this object as its ``data``, so a loader can report them)."""

    def __init__(self, entries=(), skipped=()) -> None:
        super().__init__(entries)
        self.skipped: list[dict[str, str]] = list(skipped)


def load_datalist(
    path: str | os.PathLike, key: str, base_dir: str | os.PathLike, on_bad_case: str = "raise", min_cases: int = 1
) -> Datalist:
    """Entries of list ``key`` of the datalist JSON at ``path``, with paths resolved against ``base_dir``.

    A case naming files that do not exist, or repeating an earlier case id (its outputs would overwrite the
    other's), raises with ``on_bad_case="raise"``; with ``"skip"`` it is logged and listed in the result's
    ``skipped``. Fewer than ``min_cases`` usable cases (e.g. an empty list) raise.

    Raises:
        DatalistError: the datalist is missing, is not JSON, lacks ``key``, has too few cases; or a bad case with
            ``"raise"``.
    """
    if on_bad_case not in ON_BAD_CASE:
        raise DatalistError(f"load_datalist: on_bad_case must be one of {ON_BAD_CASE}, got {on_bad_case!r}")
    path, base_dir = Path(path), Path(base_dir)
    hint = "write one with: python -m data_prep.prepare --src DATA --out DATALIST.json"
    if not path.is_file():
        raise DatalistError(f"datalist {path} not found ({hint}; set data_list_file_path)")
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatalistError(f"datalist {path} is not valid JSON: {e}") from None
    if not isinstance(content, dict) or not isinstance(content.get(key), list):
        lists = sorted(k for k, v in content.items() if isinstance(v, list)) if isinstance(content, dict) else []
        raise DatalistError(f"datalist {path} has no '{key}' list (it has: {lists or 'none'})")
    if not base_dir.is_dir():
        raise DatalistError(f"dataset_dir {base_dir} (for datalist {path}) is not a folder")
    entries = load_decathlon_datalist(path, is_segmentation=True, data_list_key=key, base_dir=base_dir)
    usable, skipped, seen = Datalist(), [], {}
    for index, entry in enumerate(entries):
        case = os.path.basename(str(entry.get("case_id", f"#{index}")))
        missing = [f for f in entry_files(entry) if not os.path.isfile(f)]
        problem = None
        if missing:
            problem = (
                f"datalist {path}, '{key}' case {case}: {len(missing)} file(s) not found, first {missing[0]} "
                f"(paths are resolved against dataset_dir {base_dir})"
            )
        elif case in seen:
            problem = (
                f"datalist {path}, '{key}' case {case}: the case id repeats entry #{seen[case]} (its outputs would "
                "overwrite the other's); give each case its own case_id"
            )
        if problem is None:
            seen[case] = index
            usable.append(entry)
        elif on_bad_case == "raise":
            raise DatalistError(problem)
        else:
            logger.warning(f"skipped case {case}: {problem}")
            skipped.append({"case_id": case, SKIPPED_KEY: problem})
    usable.skipped = skipped
    if len(usable) < min_cases:
        left_out = f" ({len(skipped)} skipped: {skipped[0][SKIPPED_KEY]})" if skipped else ""
        raise DatalistError(
            f"datalist {path}: the '{key}' list has {len(usable)} usable case(s), at least {min_cases} needed{left_out}"
        )
    return usable
