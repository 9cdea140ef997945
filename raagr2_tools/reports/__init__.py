"""Reports: Markdown tables (one writer), figures, per-case region summaries and the compression report."""

from .figures import new_figure, save_figure
from .summary import plot_region_dice
from .tables import format_value, markdown_table, quantity_table

__all__ = ["format_value", "markdown_table", "new_figure", "plot_region_dice", "quantity_table", "save_figure"]
