"""File writing that never leaves a partial file: atomic replace, JSON text and JSON files.

Every artefact of raagr2-slim (checkpoints, reports, exports, generated configs) is written through
:func:`atomic_path`, so a file on disk is either the old one or the complete new one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["TEMP_PREFIX", "atomic_path", "json_text", "remove_stale_temporaries", "write_json", "write_text_atomic"]

logger = logging.getLogger(__name__)

#: name prefix of the temporary files and folders of :func:`atomic_path` (and of staged exports)
TEMP_PREFIX = ".tmp_"
#: errors of a write that ran out of room: disk full, quota, file-size limit
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
#: torch's zip writer reports a failed write as a RuntimeError with one of these phrases
_TORCH_WRITE_FAILURES = ("unexpected pos", "failed writing", "PytorchStreamWriter")


def _write_failure(path: Path, error: BaseException) -> OSError | None:
    """A one-line ``OSError`` naming ``path`` when ``error`` says the write ran out of room (else ``None``)."""
    no_room = isinstance(error, OSError) and error.errno in _NO_ROOM
    no_room = no_room or (isinstance(error, RuntimeError) and any(t in str(error) for t in _TORCH_WRITE_FAILURES))
    if not no_room:
        return None
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free"
    except OSError:
        free = "free space unknown"
    return OSError(
        errno.ENOSPC,
        f"{path}: could not write the file, the disk is full or a size limit was reached ({free} on "
        f"{path.parent}); the previous file, if any, is unchanged. Free space and run the command again",
    )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it is synced to disk and replaces ``path``
    (mode 0644 less the umask), so ``path`` holds either the old or the complete new file, never a partial one.
    On an exception the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        try:
            yield Path(tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except (OSError, RuntimeError) as e:
            failure = _write_failure(path, e)
            if failure is None:
                raise
            raise failure from None
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o644 & ~umask)  # mkstemp creates 0600; a written artefact is meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_path`; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def json_text(content: Any, indent: int = 4) -> str:
    """``content`` as JSON text the way bundle files are written: ``indent`` spaces, UTF-8 kept, final newline."""
    return json.dumps(content, indent=indent, ensure_ascii=False) + "\n"


def write_json(path: str | os.PathLike, content: Any, indent: int = 4) -> Path:
    """Write ``content`` as JSON (:func:`json_text`) to ``path`` atomically; returns ``path``."""
    return write_text_atomic(path, json_text(content, indent=indent))


def remove_stale_temporaries(folder: str | os.PathLike, min_age_s: float = 60.0) -> list[Path]:
    """Remove the temporary files and folders (``TEMP_PREFIX*``) that killed runs left in ``folder``.

    Only entries older than ``min_age_s`` seconds go, so a writer running now keeps its own. Returns the removed
    paths (each is logged).
    """
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    now = time.time()
    for entry in folder.glob(f"{TEMP_PREFIX}*"):
        try:
            if now - entry.lstat().st_mtime < min_age_s:
                continue
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        except FileNotFoundError:
            continue
        logger.warning(f"removed {entry}, left by a run that was killed")
        removed.append(entry)
    return removed
