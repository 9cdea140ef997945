"""Which process writes: rank 0 of a ``torch.distributed`` run, or the only process."""

from __future__ import annotations

import torch

__all__ = ["is_main_process"]


def is_main_process() -> bool:
    """True outside ``torch.distributed`` and on rank 0 inside it (the process that writes files)."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )
