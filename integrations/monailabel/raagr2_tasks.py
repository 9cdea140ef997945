"""MONAI Label tasks for a raagr2-slim bundle: MONAI Label's own ``BundleInferTask`` and ``BundleTrainTask``, told
where this bundle keeps what they look for.

- Labels: the BraTS values the bundle writes, named from its ``metadata.json``
  (``network_data_format.post_processed_outputs.pred.channel_def``: NCR/NET 1, ED 2, ET 4), not the network's
  three region channels (``outputs.pred``: TC, WT, ET), which MONAI Label would otherwise list as labels 0, 1, 2.
- Inference: the bundle's ``preprocessing``, ``inferer`` and ``postprocessing``; the steps that only make sense for a
  datalist run are left out (the check that a prediction file exists already, and the writer: MONAI Label writes
  the map itself). Weights load strictly (a ``model.pt`` that does not fit the network is an error).
- Training: ``train.json`` with its ``epochs``, ``train_datalist`` and ``val_datalist`` set from the request and the
  datastore (one 4D image per study, the label in ``labels/final``), ``resume: force`` (each request continues the
  served model) and the best model written to the served bundle's ``models/model.pt``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from monailabel.tasks.infer.bundle import BundleConstants, BundleInferTask
from monailabel.tasks.train.bundle import BundleConstants as TrainConstants
from monailabel.tasks.train.bundle import BundleTrainTask

__all__ = ["BraTSBundleInferTask", "BraTSBundleTrainTask", "brats_labels"]

#: preprocessing steps of the bundle that belong to a datalist run, not to a MONAI Label request
DATALIST_ONLY = ("PredictionTargetd",)


def brats_labels(bundle: str) -> dict[str, int]:
    """``{name: value}`` of the label map the bundle writes, background left out (from its ``metadata.json``)."""
    with open(os.path.join(bundle, "configs", "metadata.json")) as f:
        meta = json.load(f)
    channel_def = meta["network_data_format"]["post_processed_outputs"]["pred"]["channel_def"]
    return {name: int(value) for value, name in channel_def.items() if int(value) != 0}


class BraTSBundleInferTask(BundleInferTask):
    """``BundleInferTask`` with the bundle's BraTS label names and values (see the module docstring)."""

    def __init__(self, path: str, conf: dict[str, str], **kwargs: Any) -> None:
        super().__init__(path, conf, const=BundleConstants(), type="segmentation", load_strict=True, **kwargs)
        if self.is_valid():
            self.labels = brats_labels(path)
            self.dimension = 3  # a volume in, a volume out (the metadata's 2-D shape is the network's slice)

    def pre_transforms(self, data: Any = None) -> list:
        return [t for t in super().pre_transforms(data) if type(t).__name__ not in DATALIST_ONLY]


class _TrainKeys(TrainConstants):
    """Where ``train.json`` of a raagr2-slim bundle keeps what ``BundleTrainTask`` overrides."""

    def key_train_trainer_max_epochs(self) -> str:
        return "epochs"

    def key_train_dataset_data(self) -> str:
        return "train_datalist"

    def key_validate_dataset_data(self) -> str:
        return "val_datalist"


class BraTSBundleTrainTask(BundleTrainTask):
    """``BundleTrainTask`` on the bundle's ``train.json`` (see the module docstring)."""

    def __init__(self, path: str, conf: dict[str, str], **kwargs: Any) -> None:
        super().__init__(path, conf, const=_TrainKeys(), load_strict=True, **kwargs)

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        overrides = dict(overrides)
        overrides.setdefault("resume", "force")
        overrides["num_workers"] = 0  # the server process trains; no worker processes under uvicorn
        return overrides
