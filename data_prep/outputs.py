"""Writing data_prep's outputs without losing data: atomic NIfTI files and the commands' one-line errors.

Every NIfTI file that :mod:`data_prep.prepare` or :mod:`data_prep.synthetic` writes goes through
:func:`save_nifti` (a temporary file beside the target, then ``os.replace``), so a file on disk is either the
old one or the complete new one, also when the disk fills up. A command that fails on bad input ends its
stderr with one line ``error: <path or option>: <problem>`` (:func:`report_error`) and exits non-zero.
"""

from __future__ import annotations

import gzip
import os
import sys
import traceback
from pathlib import Path

import nibabel as nib

from custom_modules.files import atomic_path

__all__ = ["GZIP_LEVEL", "save_nifti", "write_error", "error_line", "report_error"]

#: gzip level of written ``.nii.gz`` files (nibabel's default for ``nib.save``)
GZIP_LEVEL = 1


def save_nifti(img: nib.Nifti1Image, path: str | os.PathLike) -> Path:
    """Write ``img`` to ``path`` atomically (gzip-compressed when ``path`` ends in ``.gz``); returns ``path``.

    The data go to a temporary file beside ``path`` (:func:`custom_modules.files.atomic_path`), which then
    replaces ``path``: the temporary name ends only in ``.gz``, so the compression is chosen here from the
    target's name rather than by nibabel from the temporary one. A link at ``path`` is replaced, never written
    through.

    Raises:
        OSError: naming ``path`` (not the temporary file) when it cannot be written (full disk, no permission,
            a file where a folder should be).
    """
    path = Path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as raw:
            if path.name.lower().endswith(".gz"):  # filename "" and mtime 0: the same bytes on every run
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0) as gz:
                    img.to_stream(gz)
            else:
                img.to_stream(raw)
    except OSError as e:
        raise write_error(e, path, "cannot write this file") from e
    return path


def write_error(error: OSError, path: str | os.PathLike, what: str, cls: type[OSError] = OSError) -> OSError:
    """``cls(errno, "what (detail)", path)`` for a failed write of ``path``; the detail of ``error`` loses a
    leading ``<path>: `` that would repeat the file name."""
    detail = str(error.strerror or error)
    for name in (path, error.filename):
        detail = detail.removeprefix(f"{name}: ")
    return cls(error.errno, f"{what} ({detail})", str(path))


def error_line(error: BaseException) -> str:
    """``<path>: <problem>`` of ``error`` on one line (an ``OSError`` names its file, others their message)."""
    if isinstance(error, OSError) and error.filename is not None:
        text = f"{error.filename}: {error.strerror or error}"
        if error.filename2 is not None:
            text += f" (-> {error.filename2})"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def report_error(error: BaseException, expected: bool = True) -> int:
    """Print ``error: <path>: <problem>`` as the last line of stderr (after the traceback if not ``expected``);
    returns the exit code 1."""
    if not expected:
        traceback.print_exception(error, file=sys.stderr)
    sys.stderr.flush()
    print(f"error: {error_line(error)}", file=sys.stderr, flush=True)
    return 1
