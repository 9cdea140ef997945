"""Pruning schedules: how the target channel ratio is reached (one-shot, iterative, level by level).

``levelwise`` prunes one U-Net level (an encoder block and the decoder stage that returns to its resolution)
per step, deepest first, fine-tuning after each. It is *not* the seed study's per-layer schedule (one conv
layer per step): RAAGR2-Net has over a hundred prunable convs, and a step per layer with fine-tuning after each
is beyond any equal-budget comparison here. The former name ``layerwise`` is refused with this explanation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

__all__ = ["SCHEDULES", "RENAMED_SCHEDULES", "LAYER_GROUPS", "PruningStep", "make_schedule"]

#: ``schedule`` values accepted by :func:`make_schedule` (and the ``schedule`` key of ``compress.json``).
SCHEDULES = ("oneshot", "iterative", "levelwise")
#: names no longer accepted, with why
RENAMED_SCHEDULES: dict[str, str] = {
    "layerwise": "levelwise (it prunes one U-Net level per step, not one layer)",
}

#: RAAGR2-Net's layer groups for the level-wise schedule, deepest first: one U-Net level each, i.e. the
#: encoder block of that resolution and the decoder stage (up-conv, attention gate, RRCNN) that returns to it.
LAYER_GROUPS: Dict[str, Tuple[str, ...]] = {
    "level5": ("enc5",),
    "level4": ("enc4", "up5", "att5", "dec5"),
    "level3": ("enc3", "up4", "att4", "dec4"),
    "level2": ("enc2", "up3", "att3", "dec3"),
    "level1": ("enc1", "up2", "att2", "dec2"),
}


@dataclass(frozen=True)
class PruningStep:
    """One prune (then fine-tune) step.

    Attributes:
        index: 1-based step number.
        target_ratio: fraction of each pruned layer's *teacher* output channels removed once this step is done.
        layer_group: key of :data:`LAYER_GROUPS` whose layers are pruned in this step; ``None``: all layers.
    """

    index: int
    target_ratio: float
    layer_group: Optional[str] = None

    def as_dict(self) -> dict:
        return {"step": self.index, "target_ratio": self.target_ratio, "layers": self.layer_group or "all"}


def make_schedule(schedule: str, ratio: float, steps: int = 3) -> List[PruningStep]:
    """The steps of ``schedule`` towards channel ratio ``ratio``.

    - ``oneshot``: one step to ``ratio``.
    - ``iterative``: ``steps`` steps with linearly rising targets ``ratio * i / steps`` (torch-pruning's
      ``linear_scheduler``), fine-tuning after each.
    - ``levelwise``: one step per layer group of :data:`LAYER_GROUPS` (deepest first), each pruning that group
      to ``ratio``, fine-tuning after each.

    Raises:
        ValueError: unknown schedule, ``ratio`` outside [0, 1) or ``steps`` < 1.
    """
    if schedule in RENAMED_SCHEDULES:
        raise ValueError(f"schedule {schedule!r} was renamed {RENAMED_SCHEDULES[schedule]}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if schedule == "oneshot":
        return [PruningStep(1, ratio)]
    if schedule == "iterative":
        return [PruningStep(i, ratio * i / steps) for i in range(1, steps + 1)]
    return [PruningStep(i, ratio, group) for i, group in enumerate(LAYER_GROUPS, start=1)]
