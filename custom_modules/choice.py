"""Choosing one of several configured objects by name, with an error that names the config key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["choose"]


def choose(choices: Mapping[str, Any], name: str, key: str) -> Any:
    """``choices[name]``, for a config key ``key`` whose value picks one entry (e.g. ``loss``).

    Raises:
        ValueError: ``name`` is not a key of ``choices``; the message names ``key`` and the valid values.
    """
    if name not in choices:
        raise ValueError(f"config key '{key}': {name!r} is not one of {sorted(choices)}")
    return choices[name]
