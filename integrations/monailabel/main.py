"""The raagr2-slim MONAI Label app: one raagr2-slim bundle served for 3D Slicer (segmentation and training).

    monailabel start_server --app integrations/monailabel --studies STUDIES --host 127.0.0.1 \
        --conf bundle /path/to/<bundle>            # an unzipped packaged bundle, or a bundle folder with models/

``STUDIES`` holds one 4D NIfTI per study (channels last, T1c, T1, T2, FLAIR: ``python -m data_prep.stack``) and, for
training, BraTS label maps in ``labels/final``. The app never goes online: it serves the bundle named by ``--conf
bundle`` (no model zoo, no SAM2, no downloads). The bundle is copied once into ``<app>/model/<bundle name>`` and
that copy is served and trained, so the given bundle is never modified; ``--conf refresh true`` replaces the copy
with the given bundle again.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torchvision_cpu  # noqa: E402  (before anything imports torchvision)

torchvision_cpu.ensure_importable()

from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.interfaces.tasks.infer_v2 import InferTask  # noqa: E402
from monailabel.interfaces.tasks.train import TrainTask  # noqa: E402
from raagr2_tasks import BraTSBundleInferTask, BraTSBundleTrainTask, brats_labels  # noqa: E402

logger = logging.getLogger(__name__)


class RAAGR2App(MONAILabelApp):
    """Serves one bundle as the model ``raagr2`` (infer and train)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        source = conf.get("bundle")
        if not source:
            raise ValueError("--conf bundle: not given; start with --conf bundle /path/to/<bundle>")
        source = os.path.abspath(os.path.expanduser(source))
        for required in ("configs/inference.json", "configs/metadata.json", "models/model.pt"):
            if not os.path.isfile(os.path.join(source, required)):
                missing = os.path.join(source, required)
                raise ValueError(f"--conf bundle: {missing} not found ({source} is not a bundle)")
        self.bundle = os.path.join(app_dir, "model", os.path.basename(source.rstrip(os.sep)))
        if conf.get("refresh", "false").lower() == "true" and os.path.isdir(self.bundle):
            shutil.rmtree(self.bundle)
        if not os.path.isdir(self.bundle):
            staging = self.bundle + ".staging"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(source, staging, ignore=shutil.ignore_patterns("eval", "cache", "runs", "__pycache__"))
            os.replace(staging, self.bundle)
        logger.info(f"serving {self.bundle} (copied from {source})")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="raagr2-slim",
            description="RAAGR2-Net brain tumour segmentation (BraTS labels NCR/NET 1, ED 2, ET 4)",
            labels=brats_labels(self.bundle),
        )

    def init_infers(self) -> dict[str, InferTask]:
        task = BraTSBundleInferTask(self.bundle, self.conf)
        if not task.is_valid():
            raise ValueError(f"{self.bundle}: MONAI Label cannot load it as a bundle (see the log above)")
        return {"raagr2": task}

    def init_trainers(self) -> dict[str, TrainTask]:
        task = BraTSBundleTrainTask(self.bundle, self.conf)
        return {"raagr2": task} if task.is_valid() else {}
