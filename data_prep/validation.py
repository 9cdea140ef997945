"""Check one case before it goes into a datalist.

Each problem is a string ``"<path>: <fault> <detail>"`` where ``<fault>`` is one of
:data:`FAULTS`. Every file is read once (header and data) by :func:`inspect_case`, which also
returns the loaded volumes so that label conversion does not read them again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np

from data_prep.labels import LABEL_CONVENTIONS
from data_prep.layouts import Case

AFFINE_ATOL = 1e-3  # mm; voxel-to-world affines of one case must agree to this tolerance

FAULTS: tuple[str, ...] = (
    "missing modality",
    "missing label",
    "not a readable NIfTI file",
    "corrupt or truncated data",
    "wrong dimensions",
    "shape mismatch",
    "affine mismatch",
    "contains NaN",
    "contains Inf",
    "all voxels are 0",
    "no brain",
    "unexpected label values",
    "duplicate case id",
    "unexpected error",
)


class Loaded(NamedTuple):
    """A NIfTI image and its data array (as stored, scaling applied)."""

    img: nib.Nifti1Image
    data: np.ndarray


def fault_kind(problem: str) -> str:
    """The :data:`FAULTS` entry a problem string reports ("other" if none)."""
    return next((f for f in FAULTS if f": {f}" in problem), "other")


def _label_values(data: np.ndarray) -> np.ndarray:
    """Distinct values of a label map (fast path for non-negative integers)."""
    if data.dtype.kind in "ui" and data.size and data.min() >= 0:
        return np.flatnonzero(np.bincount(data.ravel()))
    return np.unique(data)


def inspect_case(case: Case, label_required: bool = True) -> tuple[list[str], dict[str, Loaded]]:
    """Validate ``case`` and return ``(problems, loaded)``.

    ``loaded`` maps ``"image"`` (4D layouts), each modality (3D layouts) and ``"label"``
    to the :class:`Loaded` file. Checks: files exist and are readable NIfTI, 3D volumes
    (4D with ``len(case.channels_4d)`` channels last for ``image_4d``), equal spatial shape and
    affine (``AFFINE_ATOL``) across modalities and label, no NaN/Inf in images, no image (each channel of a 4D
    image) whose voxels are all 0 (one problem ``no brain`` instead when every modality is 0 everywhere), label
    values in the set of ``case.label_convention``. Without ``label_required`` a label path that does not
    exist at all is not a problem (``loaded`` then has no ``"label"``); a label that exists is
    checked as usual.
    """
    roles = [("image", case.image_4d)] if case.image_4d else list(case.images.items())
    if label_required or (case.label is not None and os.path.lexists(case.label)):
        roles.append(("label", case.label))
    problems: list[str] = []
    loaded: dict[str, Loaded] = {}
    geometry: list[tuple] = []  # (path, spatial shape, affine) of each readable file
    for role, path in roles:
        if path is None or not path.is_file():
            what = "missing label" if role == "label" else f"missing modality {role}"
            problems.append(f"{path}: {what} (file not found)")
            continue
        try:
            img = nib.load(path)
        except Exception as e:
            problems.append(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e})")
            continue
        try:
            data = np.asanyarray(img.dataobj)
        except Exception as e:
            problems.append(f"{path}: corrupt or truncated data ({type(e).__name__}: {e})")
            continue
        if role == "label" and data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        ndim = 4 if role == "image" else 3
        if data.ndim != ndim or (ndim == 4 and data.shape[3] != len(case.channels_4d)):
            expected = f"(H, W, D, {len(case.channels_4d)})" if ndim == 4 else "(H, W, D)"
            problems.append(f"{path}: wrong dimensions {data.shape}, expected {expected}")
            continue
        geometry.append((path, data.shape[:3], img.affine))
        if role == "label":
            allowed = sorted(LABEL_CONVENTIONS[case.label_convention])
            bad = np.setdiff1d(_label_values(data), allowed)
            if bad.size:
                problems.append(
                    f"{path}: unexpected label values {bad.tolist()}, "
                    f"expected {allowed} ({case.label_convention} convention)"
                )
        elif data.dtype.kind == "f":
            for name, test in (("NaN", np.isnan), ("Inf", np.isinf)):
                n = int(np.count_nonzero(test(data)))
                if n:
                    problems.append(f"{path}: contains {name} ({n} voxels)")
        loaded[role] = Loaded(img, data)
    return problems + _geometry_problems(geometry) + _empty_problems(case, loaded), loaded


def _empty_problems(case: Case, loaded: dict[str, Loaded]) -> list[str]:
    """Images of ``case`` whose voxels are all 0 (each channel of a 4D image); one ``no brain`` problem
    naming the case's folder (or 4D file) when every modality is 0 everywhere."""
    if case.image_4d is not None:
        if "image" not in loaded:
            return []
        data = loaded["image"].data
        empty = [
            (case.image_4d, f"channel {k} ({name})")
            for k, name in enumerate(case.channels_4d)
            if not np.any(data[..., k])
        ]
        where, every = case.image_4d, len(empty) == len(case.channels_4d)
    else:
        images = [(m, loaded[m]) for m in case.images if m in loaded]
        empty = [(case.images[m], f"modality {m}") for m, (_, data) in images if not np.any(data)]
        where = Path(os.path.commonpath([case.images[m] for m in case.images]))
        every = len(empty) == len(case.images)
    if every:
        return [f"{where}: no brain: every modality is 0 everywhere"]
    return [f"{path}: all voxels are 0: an empty {what}" for path, what in empty]


def _geometry_problems(geometry: list[tuple]) -> list[str]:
    """Files whose shape, then affine, differs from the majority of the case (ties: the first file)."""

    def majority(items: list[tuple], same) -> tuple:
        return max(items, key=lambda g: sum(same(g, h) for h in items))

    if not geometry:
        return []
    ref = majority(geometry, lambda g, h: g[1] == h[1])
    problems = [f"{p}: shape mismatch {s} vs {ref[1]} of {ref[0].name}" for p, s, _ in geometry if s != ref[1]]
    same_shape = [g for g in geometry if g[1] == ref[1]]
    ref = majority(same_shape, lambda g, h: np.allclose(g[2], h[2], atol=AFFINE_ATOL))
    for path, _, affine in same_shape:
        if not np.allclose(affine, ref[2], atol=AFFINE_ATOL):
            diff = np.abs(affine - ref[2]).max()
            problems.append(f"{path}: affine mismatch vs {ref[0].name} (max abs difference {diff:.4g})")
    return problems


def validate_case(case: Case, label_required: bool = True) -> list[str]:
    """Problems of ``case`` (empty if it can be used), see :func:`inspect_case`."""
    return inspect_case(case, label_required)[0]
