"""Per-case BraTS region metrics (WT/TC/ET Dice and HD95, plus the reference study's metrics) to CSV and JSON."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.utils import string_list_all_gather

from ..constants import REGION_CHANNELS, REGION_DISPLAY_ORDER
from ..files import atomic_path, write_json
from ..metrics.hausdorff95 import HD95_DEFINITIONS
from ..metrics.summary import region_summary
from .distributed import is_main_process

logger = logging.getLogger(__name__)
#: what the region metrics score (recorded in every report)
SCORED = "the delivered BraTS label map read back as regions (WT = 1|2|4, TC = 1|4, ET = 4)"


def _case_id(item: Mapping[str, Any], image_key: str) -> str:
    """The datalist's ``case_id`` if present, else the first image file name.

    ``load_decathlon_datalist`` joins any value that names an existing path with ``base_dir``, so a case id
    equal to its folder name arrives as a path: keep its last component.
    """
    if item.get("case_id"):
        return os.path.basename(str(item["case_id"]))
    meta = getattr(item.get(image_key), "meta", {})
    name = meta.get("filename_or_obj", "unknown")
    return os.path.basename(str(name[0] if isinstance(name, (list, tuple)) else name))


class RegionMetricsWriter:
    """Collect per-case metric details of an evaluator and write ``<output_dir>/<filename>.{csv,json}``.

    The metric handlers must use ``save_details=True``; their ``engine.state.metric_details`` are
    ``(cases, channels)`` tensors. Region metrics have one channel per region in ``region_names`` order
    (MONAI BraTS order TC, WT, ET); reference metrics have one channel.

    Also puts the per-region means into ``engine.state.metrics`` as ``<prefix>_<region>_dice`` and
    ``<prefix>_<region>_hd95`` so that StatsHandler/TensorBoard handlers listed after this one report them.

    Args:
        output_dir: folder of the report files.
        dice_metric: name of the region Dice metric (``(N, 3)`` details).
        hd95_metric: name of the region HD95 metric (``(N, 3)`` details), in mm.
        reference_metrics: column name -> metric name for single-channel per-case metrics.
        region_names: channel names of the region metrics.
        prefix: prefix of the summary keys put into ``engine.state.metrics``.
        filename: base name of the report files.
        image_key: key of the image, whose file name identifies a case without ``case_id``.
        hd95_definition: the HD95 metric's definition (a key of
            :data:`custom_modules.metrics.HD95_DEFINITIONS`), recorded in the JSON; None: not recorded.
    """

    def __init__(
        self,
        output_dir: str,
        dice_metric: str = "val_mean_dice",
        hd95_metric: str | None = "val_hd95",
        reference_metrics: Mapping[str, str] | None = None,
        region_names: Sequence[str] = REGION_CHANNELS,
        prefix: str = "val",
        filename: str = "per_case_metrics",
        image_key: str = "image",
        hd95_definition: str | None = None,
    ) -> None:
        if hd95_definition is not None and hd95_definition not in HD95_DEFINITIONS:
            raise ValueError(f"hd95_definition must be one of {sorted(HD95_DEFINITIONS)}, got {hd95_definition!r}")
        self.hd95_definition = hd95_definition
        self.output_dir = output_dir
        self.region_metrics = {"dice": dice_metric, **({"hd95": hd95_metric} if hd95_metric else {})}
        self.reference_metrics = dict(reference_metrics or {})
        self.region_names = tuple(region_names)
        self.prefix = prefix
        self.filename = filename
        self.image_key = image_key
        self._cases: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self._cases.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _collect(self, engine: Engine) -> None:
        batch = engine.state.batch
        items = batch if isinstance(batch, list) else [batch]
        self._cases.extend(_case_id(item, self.image_key) for item in items)

    def rows(self, engine: Engine) -> list[dict[str, Any]]:
        """One dict per case: ``case``, ``<region>_dice``, ``<region>_hd95``, reference columns."""
        cases = string_list_all_gather(self._cases)
        details = engine.state.metric_details
        columns: dict[str, list[float]] = {}
        for kind, name in self.region_metrics.items():
            values = torch.as_tensor(details[name]).reshape(-1, len(self.region_names))
            for c, region in enumerate(self.region_names):
                columns[f"{region}_{kind}"] = values[:, c].tolist()
        for column, name in self.reference_metrics.items():
            columns[column] = torch.as_tensor(details[name]).reshape(-1).tolist()
        n = min(len(v) for v in columns.values())
        if len(cases) != n:
            logger.warning(f"{len(cases)} case names for {n} metric rows; naming rows by index")
            cases = [f"case_{i}" for i in range(n)]
        order = [f"{r}_{k}" for k in self.region_metrics for r in REGION_DISPLAY_ORDER if r in self.region_names]
        order += [c for c in columns if c not in order]
        return [{"case": cases[i], **{c: float(columns[c][i]) for c in order}} for i in range(n)]

    def __call__(self, engine: Engine) -> None:
        rows = self.rows(engine)
        if not rows:
            return
        summary = region_summary(rows)
        mean = {c: stats["mean"] for c, stats in summary.items()}
        for c, v in mean.items():
            if c.endswith(("_dice", "_hd95")) and c.split("_")[0] in self.region_names:
                engine.state.metrics[f"{self.prefix}_{c}"] = v
        logger.info(
            f"epoch {engine.state.epoch} per-case means over {len(rows)} cases: "
            + ", ".join(f"{c} {v:.4f}" for c, v in mean.items())
        )
        if not is_main_process():
            return
        os.makedirs(self.output_dir, exist_ok=True)
        base = os.path.join(self.output_dir, self.filename)
        with atomic_path(base + ".csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
            writer.writerow({"case": "mean", **mean})
        definition = (
            {"name": self.hd95_definition, "description": HD95_DEFINITIONS[self.hd95_definition]}
            if self.hd95_definition
            else None
        )
        write_json(
            base + ".json",
            {
                "epoch": engine.state.epoch,
                "scored": SCORED,
                "hd95_definition": definition,
                "cases": rows,
                "mean": mean,
                "std": {c: stats["std"] for c, stats in summary.items()},
            },
            indent=2,
        )
