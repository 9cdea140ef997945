"""Reading config values with errors that name the config key: one of several objects by name, and booleans.

``python -m monai.bundle run ... --key value`` passes values through ``fire``, which turns ``True``/``False`` into
booleans but leaves ``true``/``false`` as text, and ``bool("false")`` is true: :func:`config_bool` reads both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["choose", "config_bool"]

_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no", "none", "null")


def choose(choices: Mapping[str, Any], name: str, key: str) -> Any:
    """``choices[name]``, for a config key ``key`` whose value picks one entry (e.g. ``loss``).

    Raises:
        ValueError: ``name`` is not a key of ``choices``; the message names ``key`` and the valid values.
    """
    if name not in choices:
        raise ValueError(f"config key '{key}': {name!r} is not one of {sorted(choices)}")
    return choices[name]


def config_bool(value: Any, key: str) -> bool:
    """The boolean of config key ``key``: a bool, or the text ``true``/``false`` (``1``/``0``, ``yes``/``no``).

    Raises:
        ValueError: any other value; the message names ``key``.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"config key {key}: {value!r} is not a boolean; set it to true or false")
