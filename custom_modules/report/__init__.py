"""Tables and figures that summarise a run: per-region metrics, model size and cost, timings."""

from .summary import region_summary, render_markdown, plot_region_dice

__all__ = ["plot_region_dice", "region_summary", "render_markdown"]
