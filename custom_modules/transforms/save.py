"""Writing predictions safely: atomically, never over an input, never over an earlier result unless asked.

- :class:`AtomicNibabelWriter`: MONAI's ``NibabelWriter`` writing through :func:`custom_modules.files.atomic_path`,
  so a killed run never leaves a truncated ``.nii.gz`` (``SaveImaged(writer=...)``).
- :class:`PredictionTargetd`: before a case is inferred, refuse (skip) it when its prediction file would be one
  of its own input files, or already exists (an earlier result) without ``overwrite``.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

from monai.config import KeysCollection
from monai.data import NibabelWriter
from monai.transforms import MapTransform

from ..choice import config_bool
from ..errors import CaseInputError
from ..files import atomic_path
from .load_case import case_name, entry_files, is_paths

__all__ = ["AtomicNibabelWriter", "PredictionTargetd", "prediction_path"]


class AtomicNibabelWriter(NibabelWriter):
    """``NibabelWriter`` whose file appears complete or not at all (temporary file, fsync, rename)."""

    def write(self, filename: str | os.PathLike, verbose: bool = False, **obj_kwargs: Any) -> None:
        with atomic_path(filename) as tmp:
            super().write(tmp, verbose=verbose, **obj_kwargs)


def prediction_path(output_dir: str | os.PathLike, case_id: str, postfix: str, ext: str = ".nii.gz") -> str:
    """``<output_dir>/<case_id>_<postfix><ext>``: the name ``SaveImaged`` gives with :func:`case_output_name`."""
    return os.path.join(str(output_dir), f"{case_id}_{postfix}{ext}")


class PredictionTargetd(MapTransform):
    """Refuse a case (:class:`CaseInputError`, so the run skips it) whose prediction would replace an input file
    of the case or, without ``overwrite``, an existing file. The datalist entry is left unchanged.

    Args:
        keys: the entry's file keys (``"image"``, and ``"label"`` if present) checked against the target.
        output_dir, output_postfix, output_ext: as given to ``SaveImaged``.
        overwrite: replace predictions of an earlier run (a bool, or ``true``/``false`` text from the command line).
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str,
        output_postfix: str,
        output_ext: str = ".nii.gz",
        overwrite: bool = False,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir, self.postfix, self.ext = output_dir, output_postfix, output_ext
        self.overwrite = config_bool(overwrite, "overwrite")

    def __call__(self, data: Mapping[Hashable, Any]) -> Mapping[Hashable, Any]:
        if not all(is_paths(data[key]) for key in self.key_iterator(dict(data))):
            return data  # an image handed over in memory (an app that writes its own output): nothing to replace
        case_id = case_name(data)
        target = os.path.realpath(prediction_path(self.output_dir, case_id, self.postfix, self.ext))
        for path in entry_files(data, [*self.keys, "label"]):
            if os.path.realpath(path) == target:
                raise CaseInputError(
                    case_id, f"{target}: the prediction would replace this input file; choose another output_dir"
                )
        if os.path.exists(target) and not self.overwrite:
            raise CaseInputError(
                case_id, f"{target}: exists (an earlier result, kept); set overwrite true to replace it"
            )
        return data
