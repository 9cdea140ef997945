"""The teacher of a compression run: its weights, a frozen copy, and the fine-tuning loss that distils from it."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from custom_modules.artefacts import verify_artefact

from .distillation import KnowledgeDistillationLoss

__all__ = ["load_teacher_state", "load_teacher", "finetune_loss"]


def load_teacher_state(path: str | os.PathLike, network: nn.Module) -> dict[str, torch.Tensor]:
    """The teacher state_dict at ``path`` (a plain state_dict, or a training checkpoint with ``network``),
    loaded with ``weights_only=True`` and checked against ``network``.

    Raises:
        ValueError: naming the file when it is missing, not a state_dict, or does not fit the network.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"teacher_ckpt {path} not found: pass the teacher's state_dict (e.g. models/model.pt)")
    verify_artefact(path)  # a corrupt or replaced model.pt is refused with its rebuild command
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"teacher_ckpt {path} cannot be read as a weights-only checkpoint: {e}") from None
    if isinstance(state, Mapping) and "network" in state and isinstance(state["network"], Mapping):
        state = state["network"]
    if not isinstance(state, Mapping):
        raise ValueError(f"teacher_ckpt {path} is not a state_dict")
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"teacher_ckpt {path} does not fit the network (check `variant` and `network_def`): "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, "
            f"{len(mismatched)} shape mismatches {mismatched[:3]}"
        )
    return dict(state)


def load_teacher(path: str | os.PathLike, network: nn.Module) -> nn.Module:
    """A frozen (eval mode, no gradients) copy of ``network`` holding the teacher weights at ``path``.

    ``network`` itself is left unchanged (the compression loop decides whether it starts from these weights).
    """
    state = load_teacher_state(path, network)
    teacher = copy.deepcopy(network)
    teacher.load_state_dict(state)
    return teacher.eval().requires_grad_(False)


def finetune_loss(
    task_loss: nn.Module,
    teacher: nn.Module,
    student: nn.Module,
    distillation: bool = True,
    alpha: float = 0.5,
    temperature: float = 2.0,
    feature_weight: float = 0.0,
) -> nn.Module:
    """The loss the compression step trains with: ``task_loss``, or with ``distillation`` a
    :class:`.distillation.KnowledgeDistillationLoss` from ``teacher`` to ``student``."""
    if not distillation:
        return task_loss
    return KnowledgeDistillationLoss(
        task_loss,
        teacher,
        student,
        alpha=float(alpha),
        temperature=float(temperature),
        feature_weight=float(feature_weight),
    )
