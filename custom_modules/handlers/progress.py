"""Ignite's tqdm progress bar as a handler that bundle configs can list (``attach(engine)`` only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ignite.engine import Engine
from ignite.handlers import ProgressBar


class ProgressBarHandler:
    """Show a per-iteration progress bar for ``engine``; ``output_transform`` maps the output to shown values.

    Example (trainer): ``output_transform=lambda out: {"loss": out[0]["loss"]}``.
    """

    def __init__(self, output_transform: Callable[[Any], Any] | None = None, persist: bool = False) -> None:
        self.output_transform = output_transform
        self.persist = persist

    def attach(self, engine: Engine) -> None:
        ProgressBar(persist=self.persist).attach(engine, output_transform=self.output_transform)
