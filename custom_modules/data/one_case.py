"""The cases one inference run segments: four files (or one 4D file) given directly, else a datalist list.

``inference.json`` takes them from :func:`inference_cases`: with its key ``case_images`` set (the T1c, T1, T2 and
FLAIR files of one case, in that order, or one 4D file with the channels last in that order) no datalist is read;
otherwise the ``test`` list of ``data_list_file_path``. The outputs are the same either way
(``<output_dir>/<case_id>_pred.nii.gz``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from ..constants import MODALITY_ORDER
from .datalist import Datalist, DatalistError, load_datalist

__all__ = ["case_id_from_files", "inference_cases"]

#: a name's NIfTI extension
_NIFTI = re.compile(r"\.nii(\.gz)?$")


def case_id_from_files(files: Sequence[str | os.PathLike]) -> str:
    """The case id of a case given as files: the common prefix of their names without the NIfTI extension, up to its
    last ``_``, ``-`` or ``.`` (not included); the first file's stem when nothing is shared (e.g.
    ``[P1_t1c.nii.gz, P1_t1.nii.gz, ...]`` -> ``P1``; one 4D file ``P1.nii.gz`` -> ``P1``)."""
    stems = [_NIFTI.sub("", Path(f).name) for f in files]
    if len(set(stems)) == 1:
        return stems[0]
    prefix = re.sub(r"[^_.-]*$", "", os.path.commonprefix(stems))  # back to the last separator: P1_t1c, P1_t1 -> P1_
    return prefix.rstrip("_-.") or stems[0]


def inference_cases(
    images: Sequence[str | os.PathLike] | str | os.PathLike | None,
    path: str | os.PathLike,
    key: str,
    base_dir: str | os.PathLike,
    on_bad_case: str = "raise",
    case_id: str | None = None,
) -> Datalist:
    """One case from ``images``, else the entries of list ``key`` of the datalist at ``path``.

    Args:
        images: ``None``, or the files of one case: four 3D files in the order T1c, T1, T2, FLAIR, or one 4D file
            whose last axis holds the four modalities in that order; relative paths are resolved against
            ``base_dir`` when it is a folder, else against the current folder.
        path, key, base_dir, on_bad_case: as :func:`~custom_modules.data.load_datalist` (used when ``images`` is
            ``None``).
        case_id: the case id (the output's name); default :func:`case_id_from_files`.

    Raises:
        DatalistError: ``images`` holds another number of files, or a file does not exist (the message names it).
    """
    if images is None or images == "" or images == []:
        return load_datalist(path, key, base_dir, on_bad_case=on_bad_case)
    files = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    if len(files) not in (1, len(MODALITY_ORDER)):
        raise DatalistError(
            f"case_images: {len(files)} file(s) given; give the {len(MODALITY_ORDER)} files of one case in the order "
            f"{', '.join(MODALITY_ORDER)}, or one 4D file with the channels last in that order"
        )
    root = Path(base_dir) if Path(base_dir).is_dir() else Path.cwd()
    resolved = [str(Path(f) if Path(f).is_absolute() else root / f) for f in files]
    missing = [f for f in resolved if not os.path.isfile(f)]
    if missing:
        raise DatalistError(f"case_images: {missing[0]} not found ({len(missing)} of {len(files)} file(s) missing)")
    image = resolved if len(resolved) > 1 else resolved[0]
    return Datalist([{"case_id": case_id or case_id_from_files(resolved), "image": image}])
