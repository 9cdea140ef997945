"""Checksums of model files, and where each export came from: ``models/manifest.json``.

Every model file a bundle writes (``model.pt`` by training or compression, ``model.ts``/``model.onnx``/... by
export) gets an entry ``{"sha256": ..., "bytes": ...}``; an export adds ``"exported_from": {"file": "model.pt",
"sha256": ...}``, the weights it was made from. Inference, export and packaging call :func:`verify_artefact`,
which refuses a file that is missing, empty, changed since it was written (flipped bytes, truncation), or
exported from weights that are no longer ``model.pt``, with the command that rebuilds it. A file without an entry
(a bundle made before manifests) is used with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ArtefactError
from .files import write_json

__all__ = [
    "COMMIT_JOURNAL",
    "EXPORT_COMMAND",
    "MANIFEST_NAME",
    "artefact_entry",
    "commit_staged",
    "complete_interrupted_commit",
    "TRAIN_COMMAND",
    "read_manifest",
    "record_artefacts",
    "rebuild_command",
    "sha256_file",
    "verify_artefact",
]

logger = logging.getLogger(__name__)

#: the manifest, beside the model files
MANIFEST_NAME = "manifest.json"
#: the record of a set of staged files being moved into place (see :func:`commit_staged`)
COMMIT_JOURNAL = ".commit.json"
#: the command that writes a bundle's exports (format with ``bundle=``)
EXPORT_COMMAND = "python -m monai.bundle run export --config_file {bundle}/configs/export.json --bundle_root {bundle}"
#: the command that writes a bundle's ``model.pt`` (format with ``bundle=``)
TRAIN_COMMAND = (
    "python -m monai.bundle run training --config_file {bundle}/configs/train.json --bundle_root {bundle} "
    "(or `run compress` for a pruned bundle)"
)
_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``files`` of ``<folder>/manifest.json`` (empty when there is none).

    Raises:
        ArtefactError: the manifest exists but is not a JSON object with a ``files`` object.
    """
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text())
        files = content["files"]
        if not isinstance(files, dict):
            raise TypeError("'files' is not an object")
    except (ValueError, KeyError, TypeError) as e:
        raise ArtefactError(f"{path}: unreadable model manifest ({e}); delete it and rebuild the models") from None
    return files


def artefact_entry(path: str | os.PathLike, source: tuple[str, str] | None = None) -> dict[str, Any]:
    """The manifest entry of the file ``path``; ``source`` = (file name, sha256) of the weights it came from."""
    path = Path(path)
    entry: dict[str, Any] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    if source is not None:
        entry["exported_from"] = {"file": source[0], "sha256": source[1]}
    return entry


def _write_entries(folder: Path, entries: Mapping[str, Any]) -> None:
    files = read_manifest(folder)
    files.update(entries)
    write_json(folder / MANIFEST_NAME, {"format": 1, "files": dict(sorted(files.items()))}, indent=2)


def record_artefacts(folder: str | os.PathLike, names: Mapping[str, str | None]) -> dict[str, Any]:
    """Record the checksums of ``<folder>/<name>`` in the manifest (atomically), each with the file it was exported
    from (``names[name]``, a file in ``folder``, or ``None`` for weights). Returns the new entries."""
    folder = Path(folder)
    entries = {
        name: artefact_entry(folder / name, None if source is None else (source, sha256_file(folder / source)))
        for name, source in names.items()
    }
    _write_entries(folder, entries)
    return entries


def commit_staged(folder: str | os.PathLike, staging: str | os.PathLike, entries: Mapping[str, Any]) -> None:
    """Move the complete set of files ``<staging>/<name>`` (``entries``: their manifest entries) into ``folder``.

    A journal is written first; a process killed while moving leaves it, and the next
    :func:`complete_interrupted_commit` finishes the moves, so ``folder`` ends with the whole new set.
    """
    folder, staging = Path(folder), Path(staging)
    write_json(folder / COMMIT_JOURNAL, {"staging": staging.name, "entries": dict(entries)}, indent=2)
    complete_interrupted_commit(folder)


def complete_interrupted_commit(folder: str | os.PathLike) -> bool:
    """Finish a :func:`commit_staged` that was killed after its journal was written; ``True`` if there was one."""
    folder = Path(folder)
    journal = folder / COMMIT_JOURNAL
    if not journal.is_file():
        return False
    try:
        record = json.loads(journal.read_text())
        staging, entries = folder / record["staging"], record["entries"]
    except (ValueError, KeyError, TypeError) as e:
        raise ArtefactError(f"{journal}: unreadable commit journal ({e}); delete it and export again") from None
    for name in entries:
        if (staging / name).exists():
            os.replace(staging / name, folder / name)
    _write_entries(folder, entries)
    journal.unlink()
    logger.info(f"{folder}: moved the staged set {sorted(entries)} into place")
    return True


def rebuild_command(path: str | os.PathLike) -> str:
    """The command that writes the model file ``path`` (``<bundle>/models/<name>``) again."""
    path = Path(path)
    bundle = path.parent.parent
    return (TRAIN_COMMAND if path.suffix == ".pt" else EXPORT_COMMAND).format(bundle=bundle)


def verify_artefact(path: str | os.PathLike) -> dict[str, Any] | None:
    """Check the model file ``path`` against its manifest entry; returns the entry (``None`` when unrecorded).

    Raises:
        ArtefactError: ``path`` is missing or empty, its checksum differs from the manifest (corrupt or replaced),
            or it was exported from weights other than the current source file (stale). The message ends with
            the command that rebuilds it.
    """
    path = Path(path)
    rebuild = f"rebuild it with: {rebuild_command(path)}"
    if not path.is_file():
        raise ArtefactError(f"{path}: model file not found; {rebuild}")
    if path.stat().st_size == 0:
        raise ArtefactError(f"{path}: model file is empty (0 bytes); {rebuild}")
    entry = read_manifest(path.parent).get(path.name)
    if entry is None:
        logger.warning(f"{path}: no checksum in {MANIFEST_NAME} (written before manifests): used unverified")
        return None
    actual = sha256_file(path)
    if actual != entry.get("sha256"):
        raise ArtefactError(
            f"{path}: corrupt or changed after it was written (sha256 {actual[:12]}..., {MANIFEST_NAME} records "
            f"{str(entry.get('sha256'))[:12]}...); {rebuild}"
        )
    source = entry.get("exported_from")
    if source is not None:
        source_path = path.parent / source["file"]
        current = sha256_file(source_path) if source_path.is_file() else "missing"
        if current != source["sha256"]:
            raise ArtefactError(
                f"{path}: stale, exported from other weights than the current {source_path} "
                f"(exported from sha256 {source['sha256'][:12]}..., now {current[:12]}); {rebuild}"
            )
    return entry
