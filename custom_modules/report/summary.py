"""Summarise per-case BraTS region metrics (from ``RegionMetricsWriter`` JSON) as a table and a figure."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REGIONS = ("wt", "tc", "et")


def _stats(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return float("nan"), float("nan")
    return statistics.fmean(finite), (statistics.stdev(finite) if len(finite) > 1 else 0.0)


def region_summary(cases: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation over cases of every metric column (``wt_dice``, ``et_hd95``, ...)."""
    columns = [c for c in cases[0] if c != "case"] if cases else []
    return {c: dict(zip(("mean", "std"), _stats([float(case[c]) for case in cases]))) for c in columns}


def render_markdown(rows: Sequence[tuple[str, str]], title: str) -> str:
    """A two-column Markdown table (quantity, value) under a heading."""
    width = max(len(name) for name, _ in rows)
    lines = [f"## {title}", "", f"| {'quantity'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
    return "\n".join(lines) + "\n"


def new_figure(figsize: tuple[float, float] = (5, 4)) -> tuple[Any, Any]:
    """A matplotlib figure and axes on the non-interactive Agg backend (headless machines, CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize, dpi=120)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out, write as PNG (creating the folder) and close ``fig``; returns the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_region_dice(cases: Sequence[Mapping[str, Any]], path: str | Path, title: str) -> Path:
    """Per-case WT/TC/ET Dice as a box plot with the individual cases overlaid; writes a PNG."""
    values = [[float(case[f"{region}_dice"]) for case in cases] for region in REGIONS]
    fig, ax = new_figure()
    ax.boxplot(values, showmeans=True)
    ax.set_xticks(range(1, len(REGIONS) + 1), [r.upper() for r in REGIONS])
    for i, region_values in enumerate(values, start=1):
        ax.scatter([i] * len(region_values), region_values, s=12, alpha=0.6, zorder=3)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("Dice per case")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)
