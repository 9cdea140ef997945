"""Matplotlib figures on the headless Agg backend, written as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["new_figure", "save_figure"]


def new_figure(figsize: tuple[float, float] = (5, 4)) -> tuple[Any, Any]:
    """A matplotlib figure and axes on the non-interactive Agg backend (headless machines, CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize, dpi=120)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out, write as PNG (atomically, creating the folder) and close ``fig``; returns the path."""
    import matplotlib.pyplot as plt

    from custom_modules.files import atomic_path

    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
