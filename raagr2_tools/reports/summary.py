"""Per-case BraTS region metrics (from ``RegionMetricsWriter`` JSON) as a figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from custom_modules.constants import REGION_DISPLAY_ORDER

from .figures import new_figure, save_figure

__all__ = ["plot_region_dice"]


def plot_region_dice(cases: Sequence[Mapping[str, Any]], path: str | Path, title: str) -> Path:
    """Per-case WT/TC/ET Dice as a box plot with the individual cases overlaid; writes a PNG."""
    values = [[float(case[f"{region}_dice"]) for case in cases] for region in REGION_DISPLAY_ORDER]
    fig, ax = new_figure()
    ax.boxplot(values, showmeans=True)
    ax.set_xticks(range(1, len(REGION_DISPLAY_ORDER) + 1), [r.upper() for r in REGION_DISPLAY_ORDER])
    for i, region_values in enumerate(values, start=1):
        ax.scatter([i] * len(region_values), region_values, s=12, alpha=0.6, zorder=3)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("Dice per case")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)
