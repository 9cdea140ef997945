"""File writing that never leaves a partial file: atomic replace, JSON text and JSON files.

Every artefact of raagr2-slim (checkpoints, reports, exports, generated configs) is written through
:func:`atomic_path`, so a file on disk is either the old one or the complete new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "write_text_atomic", "json_text", "write_json"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it is synced to disk and replaces ``path``
    (mode 0644 less the umask), so ``path`` holds either the old or the complete new file, never a partial one.
    On an exception the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
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
