"""Tables and figures that summarise a run: per-region metrics, model size and cost, timings."""

from .summary import new_figure, plot_region_dice, region_summary, render_markdown, save_figure

__all__ = ["new_figure", "plot_region_dice", "region_summary", "render_markdown", "save_figure"]
