"""What a fine-tuning phase must call while it trains, as plain callables (no training framework involved).

The compression loop hands a :class:`TrainingHooks` to its fine-tune callback; the MONAI glue maps it onto the
bundle trainer's events (:func:`raagr2_tools.compression.step.attach_training_hooks`), a plain PyTorch loop
calls the lists itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["TrainingHooks"]

Hook = Callable[[], None]


@dataclass
class TrainingHooks:
    """Callbacks of one fine-tuning phase.

    Attributes:
        on_start: called once before the first iteration.
        after_backward: called after every ``loss.backward()``, before the optimizer step (gradient edits).
        after_step: called after every optimizer step (weight edits, e.g. re-applying masks).
    """

    on_start: list[Hook] = field(default_factory=list)
    after_backward: list[Hook] = field(default_factory=list)
    after_step: list[Hook] = field(default_factory=list)
