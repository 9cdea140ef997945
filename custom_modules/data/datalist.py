"""``load_decathlon_datalist`` with checks first, so a bad datalist fails with one clear sentence."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from monai.data import load_decathlon_datalist


class DatalistError(ValueError):
    """A datalist or a file it names is missing or malformed; the message names the file and the problem."""


def _files(entry: dict[str, Any]) -> list[str]:
    paths = []
    for key in ("image", "label"):
        value = entry.get(key)
        paths += [value] if isinstance(value, str) else list(value or [])
    return paths


def load_datalist(path: str | os.PathLike, key: str, base_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Entries of list ``key`` of the datalist JSON at ``path``, with paths resolved against ``base_dir``.

    Raises:
        DatalistError: the datalist is missing, is not JSON, lacks ``key``, or names files that do not exist.
    """
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
    for entry in entries:
        missing = [f for f in _files(entry) if not os.path.isfile(f)]
        if missing:
            case = os.path.basename(str(entry.get("case_id", "?")))
            raise DatalistError(
                f"datalist {path}, '{key}' case {case}: {len(missing)} file(s) not found, first {missing[0]} "
                f"(paths are resolved against dataset_dir {base_dir})"
            )
    return entries
