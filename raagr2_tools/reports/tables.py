"""Markdown tables: the one writer every report, job and benchmark of raagr2-slim uses."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["format_value", "markdown_table", "quantity_table"]


def format_value(value: Any, spec: str, scale: float = 1.0) -> str:
    """``value * scale`` formatted with ``spec`` (e.g. ``".4f"``), or ``"n/a"`` when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return format(value * scale if scale != 1.0 else value, spec)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table: ``header`` cells, then one line per row (cells as ``str``; short rows padded)."""
    width = len(header)
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        cells = [str(c) for c in row] + [""] * (width - len(row))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def quantity_table(rows: Sequence[tuple[str, str]], title: str) -> str:
    """A two-column (quantity, value) :func:`markdown_table` under a ``## title`` heading."""
    return f"## {title}\n\n" + markdown_table(("quantity", "value"), rows)
