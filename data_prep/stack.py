"""Write each case's four modalities as one 4D NIfTI (channels last, T1c, T1, T2, FLAIR): what MONAI Label and
3D Slicer take as one image per study.

Usage::

    python -m data_prep.stack --src DATA --out STUDIES [--labels] [--cases ID ...]

Every case that :mod:`data_prep.prepare` finds under ``--src`` (any layout it knows; each case checked, a bad case
skipped with one line) becomes ``STUDIES/<case_id>.nii.gz``: shape ``(X, Y, Z, 4)``, the channels in
:data:`custom_modules.constants.MODALITY_ORDER`, the voxel grid and affine of the case's first modality, the
modalities' common data type (float32 when they differ). With ``--labels`` the case's BraTS label map (0/1/2/4,
converted by prepare where the layout uses other values) is written as ``STUDIES/labels/final/<case_id>.nii.gz``,
the layout of a MONAI Label local datastore, so the folder can be given to ``monailabel start_server --studies``.
A file that exists already is kept (never overwritten) and named; writes are atomic.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from custom_modules.constants import MODALITY_ORDER

from .outputs import error_line, save_nifti
from .prepare import prepared_cases

__all__ = ["LABELS_DIR", "stack_case", "stack_dataset"]

#: where a MONAI Label local datastore keeps the final labels, relative to the studies folder
LABELS_DIR = Path("labels") / "final"


def stack_case(images: Sequence[str | Path] | str | Path, out: str | Path) -> Path:
    """Write the case's modalities (four 3D files in :data:`MODALITY_ORDER`, or one 4D file already in that order)
    as one channels-last 4D NIfTI at ``out``; returns ``out``.

    Raises:
        ValueError: the modalities do not share one shape and affine (the message names the file).
    """
    files = [Path(images)] if isinstance(images, (str, Path)) else [Path(f) for f in images]
    loaded = [nib.load(str(f)) for f in files]
    if len(files) == 1:
        if len(loaded[0].shape) != 4 or loaded[0].shape[-1] != len(MODALITY_ORDER):
            raise ValueError(f"{files[0]}: shape {loaded[0].shape}, expected (X, Y, Z, {len(MODALITY_ORDER)})")
        return save_nifti(loaded[0], out)
    first = loaded[0]
    for f, img in zip(files[1:], loaded[1:]):
        if img.shape != first.shape or not np.allclose(img.affine, first.affine, atol=1e-3):
            raise ValueError(f"{f}: shape {img.shape} or affine differs from {files[0]}'s (one grid for all four)")
    dtypes = {img.get_data_dtype() for img in loaded}
    dtype = dtypes.pop() if len(dtypes) == 1 and not any(img.dataobj.slope != 1 for img in loaded) else np.float32
    data = np.stack([np.asanyarray(img.dataobj).astype(dtype) for img in loaded], axis=-1)
    header = first.header.copy()
    header.set_data_dtype(dtype)
    header.set_data_shape(data.shape)
    return save_nifti(nib.Nifti1Image(data, first.affine, header), out)


def stack_dataset(src: str | Path, out: str | Path, labels: bool = False, cases: Sequence[str] = ()) -> list[Path]:
    """Stack every case under ``src`` (or only ``cases``) into ``out``; returns the files written."""
    out = Path(out)
    written: list[Path] = []
    for case in prepared_cases(src, cases):
        targets = [(case.images, out / f"{case.case_id}.nii.gz", "image")]
        if labels and case.label is not None:
            targets.append((case.label, out / LABELS_DIR / f"{case.case_id}.nii.gz", "label"))
        for source, target, what in targets:
            if target.exists():
                print(f"KEEP {target}: exists (never overwritten)", file=sys.stderr)
                continue
            try:
                if what == "image":
                    stack_case(source, target)
                else:
                    save_nifti(nib.load(str(source)), target)
            except (ValueError, OSError) as e:
                print(f"SKIP {case.case_id}: {error_line(e)}", file=sys.stderr)
                continue
            written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, required=True, help="a folder of cases (any layout data_prep knows)")
    parser.add_argument("--out", type=Path, required=True, help="the studies folder to write")
    parser.add_argument("--labels", action="store_true", help="also write labels/final/<case_id>.nii.gz")
    parser.add_argument("--cases", nargs="*", default=(), help="only these case ids")
    args = parser.parse_args(argv)
    try:
        written = stack_dataset(args.src, args.out, args.labels, args.cases)
    except (OSError, RuntimeError, ValueError) as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        return 1
    print(f"{len(written)} file(s) written under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
