"""Resume record of a compression run: one atomically written file per finished step.

``<work_dir>/progress.pt`` holds the progress record (JSON text), the network's weights and the SNIP masks in
one ``torch.save`` written through :func:`custom_modules.files.atomic_path`, so a kill between steps never
leaves weights and record out of step; ``progress.json`` is a readable copy of the record.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from custom_modules.files import write_text_atomic
from custom_modules.handlers import save_atomic

__all__ = ["ProgressStore"]

logger = logging.getLogger(__name__)


class ProgressStore:
    """Load and save the last finished step of a run whose settings are ``signature``.

    Args:
        work_dir: folder of ``progress.pt`` and ``progress.json`` (created on the first save).
        signature: JSON-serialisable settings; a record written under other settings is ignored.
        name: what is being compressed, for logs (default: the folder's name).
    """

    def __init__(self, work_dir: str | Path, signature: Mapping[str, Any], name: str | None = None) -> None:
        self.work_dir = Path(work_dir)
        self.name = name or self.work_dir.name
        self.signature = json.loads(json.dumps(dict(signature)))

    @property
    def path(self) -> Path:
        return self.work_dir / "progress.pt"

    def new(self) -> dict[str, Any]:
        """A fresh record: no step done."""
        return {"signature": self.signature, "done": 0, "steps": [], "history": []}

    def load(
        self, device: torch.device | str = "cpu"
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
        """``(record, network state_dict, masks)`` of the last finished step, or ``None`` when there is none for
        this signature (``weights_only=True``)."""
        if not self.path.is_file():
            return None
        saved = torch.load(self.path, map_location=device, weights_only=True)
        record = json.loads(saved["progress"])
        if record.get("signature") != self.signature:
            logger.warning(f"{self.path} is from a run with other settings; starting over")
            return None
        return record, saved["network"], dict(saved.get("masks") or {})

    def save(
        self, record: Mapping[str, Any], network: nn.Module, masks: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        """Checkpoint a finished step in one atomic write, then refresh the readable ``progress.json``."""
        text = json.dumps(dict(record))
        save_atomic({"progress": text, "network": network.state_dict(), "masks": dict(masks or {})}, self.path)
        write_text_atomic(self.work_dir / "progress.json", text)
