"""Name output files after the datalist's ``case_id`` instead of the first modality's file name."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform

_NIFTI_EXTENSIONS = (".nii.gz", ".nii")


class CaseIdToMetad(MapTransform):
    """Copy ``data[case_key]`` into ``data[key].meta["case_id"]`` (for :func:`case_output_name`).

    ``load_decathlon_datalist`` turns a case id that names an existing folder into a path; the last path
    component is the case id.
    """

    def __init__(self, keys: KeysCollection, case_key: str = "case_id", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.case_key = case_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if d.get(self.case_key):
            for key in self.key_iterator(d):
                d[key].meta["case_id"] = os.path.basename(str(d[self.case_key]))
        return d


def case_output_name(metadata: Mapping[str, Any], saver: Any = None) -> dict[str, Any]:
    """``output_name_formatter`` for ``SaveImaged``: the case id, else the input file stem."""
    subject = metadata.get("case_id")
    if not subject:
        name = metadata.get("filename_or_obj", "case")
        name = os.path.basename(str(name[0] if isinstance(name, (list, tuple)) else name))
        subject = next((name[: -len(e)] for e in _NIFTI_EXTENSIONS if name.endswith(e)), name)
    return {"subject": subject, "idx": metadata.get("patch_index")}
