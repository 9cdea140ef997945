"""Atomic checkpoints and resuming for Ignite/MONAI engines.

MONAI's ``CheckpointSaver`` writes with ``atomic=False``, so a run killed while saving can leave a truncated
``model.pt``. These handlers write to a temporary file in the same folder and ``os.replace`` it into place,
so a checkpoint on disk is always complete. Only plain ``state_dict`` content is stored (loadable with
``torch.load(..., weights_only=True)``); modules are never pickled.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events

from ..artefacts import record_artefacts, verify_artefact
from ..files import atomic_path
from .distributed import is_main_process

logger = logging.getLogger(__name__)


def save_atomic(obj: Any, path: str | os.PathLike, record: bool = True) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_path`: never a partial file at ``path``. With ``record``
    its checksum goes into the folder's ``manifest.json`` (:mod:`custom_modules.artefacts`)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    if record:
        record_artefacts(os.path.dirname(os.path.abspath(path)), {os.path.basename(path): None})


def _unwrap(module: Any) -> Any:
    """The plain module behind ``DistributedDataParallel``/``DataParallel``."""
    return (
        module.module
        if isinstance(module, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel))
        else module
    )


class TrainingStateSaver:
    """Write everything needed to resume training to ``<save_dir>/<filename>`` every ``interval`` epochs.

    Attach to the trainer *after* ``ValidationHandler`` so that the saved LR scheduler and best metric
    already include this epoch's validation.

    Args:
        save_dir: folder of the checkpoint.
        save_dict: objects with ``state_dict()``, e.g. ``{"network": net, "optimizer": opt, "lr_scheduler": s}``.
        filename: checkpoint file name, default ``checkpoint_last.pt``.
        interval: save every ``interval`` epochs.
        evaluator: optional evaluator whose ``best_metric``/``best_metric_epoch`` are saved too.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: Mapping[str, Any],
        filename: str = "checkpoint_last.pt",
        interval: int = 1,
        evaluator: Engine | None = None,
    ) -> None:
        self.path = os.path.join(save_dir, filename)
        self.save_dict = dict(save_dict)
        self.interval = interval
        self.evaluator = evaluator

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        state = {name: _unwrap(obj).state_dict() for name, obj in self.save_dict.items()}
        state["trainer"] = engine.state_dict()  # iteration, epoch_length, max_epochs
        state["epoch"] = engine.state.epoch
        if self.evaluator is not None:
            state["evaluator_best"] = {
                "best_metric": float(self.evaluator.state.best_metric),
                "best_metric_epoch": int(self.evaluator.state.best_metric_epoch),
            }
        save_atomic(state, self.path)
        logger.info(f"epoch {engine.state.epoch}: saved training state to {self.path}")


class BestModelSaver:
    """Save the network weights (plain ``state_dict``) to ``<save_dir>/<filename>`` when the key metric improves.

    Attach to the evaluator. MONAI's ``Workflow`` updates ``state.best_metric_epoch`` on ``EPOCH_COMPLETED``
    before user handlers run, so an equal epoch means "this validation is the new best".
    """

    def __init__(self, save_dir: str, network: torch.nn.Module, filename: str = "model.pt") -> None:
        self.path = os.path.join(save_dir, filename)
        self.network = network

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not is_main_process() or engine.state.best_metric_epoch != engine.state.epoch:
            return
        save_atomic(_unwrap(self.network).state_dict(), self.path)
        logger.info(f"new best {engine.state.best_metric:.4f} at epoch {engine.state.epoch}: saved {self.path}")


class FinalModelSaver:
    """At the end of training, save the network to ``<save_dir>/<filename>`` if validation never chose a best.

    Without validation data (e.g. a two-patient dataset split into train and test only) ``BestModelSaver``
    never fires; this keeps ``model.pt`` the single file that evaluation and inference load.
    """

    def __init__(
        self, save_dir: str, network: torch.nn.Module, evaluator: Engine | None = None, filename: str = "model.pt"
    ) -> None:
        self.path = os.path.join(save_dir, filename)
        self.network = network
        self.evaluator = evaluator

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        validated = self.evaluator is not None and self.evaluator.state.best_metric_epoch > 0
        if validated or not is_main_process():
            return
        logger.warning(f"no validation result chose a best model: saving the final weights to {self.path}")
        save_atomic(_unwrap(self.network).state_dict(), self.path)


class ResumeFromCheckpoint:
    """Resume a trainer from a :class:`TrainingStateSaver` checkpoint when the file exists.

    Attach to the trainer. Without a checkpoint, training starts from scratch (logged). ``max_epochs`` of the
    current run is kept, so a finished run can be extended by raising ``epochs``.

    Args:
        load_path: checkpoint path, usually ``<ckpt_dir>/checkpoint_last.pt``.
        load_dict: the same names as the saver's ``save_dict``.
        evaluator: optional evaluator whose best metric is restored.
        map_location: passed to ``torch.load``.
    """

    def __init__(
        self,
        load_path: str,
        load_dict: Mapping[str, Any],
        evaluator: Engine | None = None,
        map_location: Any = "cpu",
    ) -> None:
        self.load_path = load_path
        self.load_dict = dict(load_dict)
        self.evaluator = evaluator
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not os.path.isfile(self.load_path):
            logger.info(f"no checkpoint at {self.load_path}: training from scratch")
            return
        try:
            verify_artefact(self.load_path)  # a checkpoint changed after it was written (flipped bytes) is refused
            checkpoint = torch.load(self.load_path, map_location=self.map_location, weights_only=True)
        except Exception as e:
            raise RuntimeError(
                f"cannot resume: checkpoint {self.load_path} is unreadable ({type(e).__name__}: {e}); "
                "delete it to train from scratch"
            ) from None
        missing = [name for name in [*self.load_dict, "trainer"] if name not in checkpoint]
        if missing:
            raise RuntimeError(f"cannot resume: checkpoint {self.load_path} lacks {missing}")
        for name, obj in self.load_dict.items():
            _unwrap(obj).load_state_dict(checkpoint[name])
        max_epochs = engine.state.max_epochs
        engine.load_state_dict(checkpoint["trainer"])
        engine.state.max_epochs = max_epochs
        if self.evaluator is not None and "evaluator_best" in checkpoint:
            self.evaluator.state.best_metric = checkpoint["evaluator_best"]["best_metric"]
            self.evaluator.state.best_metric_epoch = checkpoint["evaluator_best"]["best_metric_epoch"]
        logger.info(f"resumed from {self.load_path} after epoch {engine.state.epoch} of {max_epochs}")
