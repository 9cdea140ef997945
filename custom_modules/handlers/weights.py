"""Load a bundle's weights with checks: checksum, weights-only loading, and a fit to the network, each failure
named with the file and the command that rebuilds it (MONAI's ``CheckpointLoader`` reports none of these with
the path)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events

from ..artefacts import rebuild_command, verify_artefact
from ..errors import ArtefactError

__all__ = ["WeightsLoader", "load_weights", "load_state_dict_checked"]

logger = logging.getLogger(__name__)


def load_weights(path: str | os.PathLike, map_location: Any = "cpu", verify: bool = True) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` after :func:`verify_artefact` (unless ``verify`` is false: a copy
    the caller verified); a ``state_dict`` of tensors.

    Raises:
        ArtefactError: missing, empty, corrupt or stale file; a file that is not a torch archive (truncated,
            another format); content refused by weights-only loading (pickled objects other than tensors).
    """
    if verify:
        verify_artefact(path)
    rebuild = f"rebuild it with: {rebuild_command(path)}"
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Weights only load failed" in str(e):
            raise ArtefactError(
                f"{path}: refused, it holds pickled objects other than tensors (weights-only loading does not run "
                f"them); use a plain state_dict, or {rebuild}"
            ) from None
        raise ArtefactError(f"{path}: not a readable weights file ({type(e).__name__}: {first}); {rebuild}") from None
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]  # MONAI CheckpointSaver layout {"model": state_dict}
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ArtefactError(f"{path}: not a state_dict of tensors ({type(state).__name__}); {rebuild}")
    return dict(state)


def load_state_dict_checked(network: torch.nn.Module, state: Mapping[str, Any], path: str | os.PathLike) -> None:
    """``network.load_state_dict(state)``, or an :class:`ArtefactError` naming ``path`` and what does not fit."""
    target = getattr(network, "module", network)
    expected = target.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(expected[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = [
            f"{len(missing)} missing (first {missing[0]})" if missing else "",
            f"{len(unexpected)} unexpected (first {unexpected[0]})" if unexpected else "",
            f"{len(shapes)} of other shape (first {shapes[0]}: {tuple(state[shapes[0]].shape)} vs "
            f"{tuple(expected[shapes[0]].shape)})"
            if shapes
            else "",
        ]
        raise ArtefactError(
            f"{path}: weights do not fit this bundle's network_def (another variant, pruning or channel count?): "
            f"{', '.join(p for p in parts if p)} keys; use the model.pt of this bundle or {rebuild_command(path)}"
        )
    target.load_state_dict(state)


class WeightsLoader:
    """Load ``load_path`` into ``load_dict["model"]`` when the engine starts (for ``models/model.pt``).

    The bundle-config counterpart of MONAI's ``CheckpointLoader`` for inference and evaluation: verifies the
    file against ``models/manifest.json`` and names the file in every failure (see :func:`load_weights`).

    Args:
        load_path: the weights file.
        load_dict: ``{"model": network}``.
        map_location: passed to ``torch.load``.
    """

    def __init__(self, load_path: str, load_dict: Mapping[str, torch.nn.Module], map_location: Any = "cpu") -> None:
        if set(load_dict) != {"model"}:
            raise ValueError(f"WeightsLoader: load_dict must be {{'model': network}}, got keys {sorted(load_dict)}")
        self.load_path, self.network, self.map_location = load_path, load_dict["model"], map_location

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        state = load_weights(self.load_path, self.map_location or "cpu")
        load_state_dict_checked(self.network, state, self.load_path)
        logger.info(f"loaded weights {self.load_path}")
