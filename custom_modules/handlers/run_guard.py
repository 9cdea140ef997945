"""A training run folder that knows what it is: its settings and data on record, one writer at a time.

MONAI bundles resume from ``checkpoint_last.pt`` whenever it exists, so re-running ``run training`` in a folder
with other data or settings would "resume" the old run. :class:`RunGuard` records the run's settings and a
fingerprint of its data in ``<ckpt_dir>/run.json`` at the first start; a later start with a checkpoint present
compares them and refuses on a difference, saying how to start fresh or resume on purpose. It also holds an
exclusive lock on the folder for the life of the process (:class:`~custom_modules.locks.FolderLock`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine

from ..errors import RunFolderError
from ..files import remove_stale_temporaries, write_json
from ..locks import FolderLock
from ..transforms.load_case import entry_files
from .distributed import is_main_process

__all__ = ["RESUME_MODES", "RUN_RECORD", "RunGuard", "data_fingerprint"]

logger = logging.getLogger(__name__)

#: the record of a run's settings and data, in its checkpoint folder
RUN_RECORD = "run.json"
#: values of the config key ``resume``
RESUME_MODES = ("auto", "force")


def data_fingerprint(datalists: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """SHA-256 over every entry of ``datalists`` (name -> entries) and each file's path, size and mtime."""
    digest = hashlib.sha256()
    for name in sorted(datalists):
        for entry in datalists[name]:
            for path in entry_files(entry):
                stat = os.stat(path) if os.path.exists(path) else None
                stamp = f"{stat.st_size}:{stat.st_mtime_ns}" if stat else "missing"
                digest.update(f"{name}|{entry.get('case_id', '')}|{os.path.abspath(path)}|{stamp}\n".encode())
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class RunGuard:
    """Lock ``run_dir`` and check that a resumed run has the recorded settings and data.

    Under DDP only rank 0 locks and checks. Put it first in the trainer's handlers: the check runs when the
    config builds the trainer (before a checkpoint is loaded), so nothing is trained or written on a refusal.

    Args:
        run_dir: the checkpoint folder (``@ckpt_dir``).
        settings: the settings that define the run (learning rate, ROI, loss, network, seed ...); ``epochs`` is
            left out on purpose so a finished run can be extended.
        data: datalist name -> entries (``{"training": @train_datalist, "validation": @val_datalist}``).
        network: the network; its class and parameter names and shapes are part of the settings.
        checkpoint: the file whose presence means "resume" (default ``checkpoint_last.pt``).
        resume: ``"auto"`` (resume only the same run) or ``"force"`` (resume despite differences, recorded).
    """

    def __init__(
        self,
        run_dir: str,
        settings: Mapping[str, Any],
        data: Mapping[str, Sequence[Mapping[str, Any]]],
        network: Any = None,
        checkpoint: str = "checkpoint_last.pt",
        resume: str = "auto",
    ) -> None:
        if resume not in RESUME_MODES:
            raise ValueError(f"config key 'resume': {resume!r} is not one of {RESUME_MODES}")
        self.run_dir, self.resume = Path(run_dir), resume
        self.lock = FolderLock(self.run_dir, "training")
        if not is_main_process():  # DDP: rank 0 holds the lock and checks for all ranks
            return
        self.lock.acquire()
        remove_stale_temporaries(self.run_dir, min_age_s=0)  # we hold the lock: no writer of ours is running
        settings = dict(settings)
        if network is not None:
            net = getattr(network, "module", network)
            shapes = json.dumps({k: list(v.shape) for k, v in net.state_dict().items()})
            settings["network"] = f"{type(net).__name__} {hashlib.sha256(shapes.encode()).hexdigest()[:16]}"
        record = {"settings": _jsonable(settings), "data_sha256": data_fingerprint(data)}
        record["cases"] = {name: len(entries) for name, entries in data.items()}
        try:
            self._check(record, self.run_dir / checkpoint)
        except BaseException:
            self.lock.release()
            raise

    def _check(self, record: dict[str, Any], checkpoint: Path) -> None:
        path = self.run_dir / RUN_RECORD
        if not checkpoint.is_file():
            write_json(path, record, indent=2)
            return
        if not path.is_file():
            logger.warning(f"{path}: no record of the run that wrote {checkpoint} (made before run records): resuming")
            write_json(path, record, indent=2)
            return
        try:
            old = json.loads(path.read_text())
        except ValueError as e:
            raise RunFolderError(f"{path}: unreadable run record ({e}); delete {self.run_dir} to start fresh") from None
        differs = sorted(
            k
            for k in {**old.get("settings", {}), **record["settings"]}
            if old.get("settings", {}).get(k) != record["settings"].get(k)
        )
        if old.get("data_sha256") != record["data_sha256"]:
            differs.append("data (datalist entries or their files)")
        if not differs:
            return
        if self.resume == "force":
            logger.warning(f"{self.run_dir}: resuming on purpose with other {', '.join(differs)} (resume force)")
            write_json(path, {**record, "resumed_with_changes": differs}, indent=2)
            return
        raise RunFolderError(
            f"{self.run_dir}: holds a run with other {', '.join(differs)} than this one; start fresh with another "
            f"bundle_root/ckpt_dir (or delete {checkpoint}), or resume it on purpose with --resume force"
        )

    def attach(self, engine: Engine) -> None:
        """Nothing to attach: the check and the lock happen at construction; kept for the handler list."""
