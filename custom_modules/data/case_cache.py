"""A one-time, uncompressed disk cache of the deterministic part of a case's preprocessing: :class:`CaseCacheDataset`.

MONAI's ``PersistentDataset`` runs a ``Compose`` up to its first random transform once per case (for training:
``LoadCased`` ... ``FgBgToIndicesd``, i.e. reading and decompressing the 4 modalities, the input checks, the
z-score and the crop indices), saves the result with ``torch.save`` (uncompressed) in ``cache_dir`` and afterwards
loads it instead. The random transforms after that point (slice sampling, flips, intensity augmentation) run on
every access exactly as without a cache, so what is trained on does not change. This subclass adds what a
training run needs:

- **the key of an entry** covers the datalist entry, the size and modification time (ns) of every file it names
  (:func:`stamped_hash`, as ``RunGuard``'s data fingerprint: a file replaced in place gets a new entry, the stale
  one is never read) and the cached transforms with all their settings (``hash_transform=pickle_hashing``:
  another ``roi_size`` or normalisation gets new entries);
- **entries keep their metadata** (``MetaTensor`` affine, voxel size, applied operations) and are read with
  ``torch.load(weights_only=True)``: only the numpy arrays, dtypes and MONAI enums of that metadata are allowed
  besides tensors (:func:`cache_safe_globals`);
- **an entry that cannot be read** (truncated by a full disk or a killed copy) is removed and rebuilt, once;
- **a case the transforms refuse** behaves as without a cache: ``LoadCased``'s ``CaseInputError`` propagates and
  nothing is written, or a :class:`~custom_modules.data.ScreenedCompose` turns it into a skip record (which is
  cached like any result and rebuilt when the case's files change).

Space: one full-size BraTS case (4x240x240x155 float32 image, 3-channel float32 regions, uint8 brain mask, crop
indices) takes about 265 MiB; delete ``cache_dir`` to free it (entries of old settings are not removed).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import PersistentDataset
from monai.data.utils import pickle_hashing
from monai.utils import TraceKeys

from ..transforms.load_case import entry_files

__all__ = ["CaseCacheDataset", "cache_safe_globals", "file_stamps", "stamped_hash"]

logger = logging.getLogger(__name__)


def file_stamps(entry: Mapping[Hashable, Any], keys: Sequence[str] = ("image", "label")) -> list[list[Any]]:
    """``[absolute path, size in bytes, mtime in ns]`` of every file of ``entry`` under ``keys`` (``-1, -1`` for
    a file that cannot be stat-ed)."""
    stamps = []
    for path in entry_files(entry, keys):
        try:
            stat = os.stat(path)
            stamps.append([os.path.abspath(path), stat.st_size, stat.st_mtime_ns])
        except OSError:
            stamps.append([os.path.abspath(path), -1, -1])
    return stamps


def stamped_hash(item: Mapping[Hashable, Any]) -> bytes:
    """The cache key of a datalist entry: SHA-256 (hex, as bytes) of the entry and its :func:`file_stamps`."""
    return pickle_hashing({"entry": dict(item), "files": file_stamps(item)})


def cache_safe_globals() -> list[Any]:
    """What ``torch.load(weights_only=True)`` must accept beyond tensors to read a cached case: the numpy arrays
    and dtypes of the NIfTI header in a ``MetaTensor``'s metadata and MONAI's ``TraceKeys`` (``MetaTensor``,
    ``MetaKeys`` and ``SpaceKeys`` MONAI allows itself)."""
    multiarray = getattr(np, "_core", None) or np.core  # numpy 2 renamed np.core
    dtypes = [getattr(np.dtypes, name) for name in getattr(np.dtypes, "__all__", [])] if hasattr(np, "dtypes") else []
    return [np.ndarray, np.dtype, multiarray.multiarray._reconstruct, *dtypes, TraceKeys]


class CaseCacheDataset(PersistentDataset):
    """``PersistentDataset`` of datalist entries keyed by :func:`stamped_hash` and the cached transforms.

    Args:
        data: datalist entries (``{"case_id", "image": [4 paths], "label": path, ...}``).
        transform: the whole preprocessing ``Compose``; everything before its first random transform is cached.
        cache_dir: the cache folder (created if missing).
        hash_func: the key of an entry (default :func:`stamped_hash`).

    ``__getitem__`` returns what ``transform`` returns without a cache (e.g. ``slices_per_case`` dicts of
    ``image`` ``(4, H, W)`` and ``label`` ``(3, H, W)`` for training), with the same random draws.
    """

    def __init__(
        self,
        data: Sequence[Mapping[Hashable, Any]],
        transform: Callable,
        cache_dir: str | os.PathLike,
        hash_func: Callable[..., bytes] = stamped_hash,
    ) -> None:
        super().__init__(
            data,
            transform,
            cache_dir=cache_dir,
            hash_func=hash_func,
            hash_transform=pickle_hashing,
            track_meta=True,
            weights_only=True,
        )

    def entry_path(self, item: Mapping[Hashable, Any]) -> Path:
        """The cache file of datalist entry ``item`` (whether or not it exists)."""
        return Path(self.cache_dir) / f"{self.hash_func(item).decode('utf-8')}{self.transform_hash}.pt"

    def _cachecheck(self, item_transformed: Any) -> Any:
        with torch.serialization.safe_globals(cache_safe_globals()):
            try:
                return super()._cachecheck(item_transformed)
            except (RuntimeError, EOFError) as e:
                # an entry that exists but does not load (MONAI itself only drops an unpicklable one);
                # without an entry the error is the transforms' own (e.g. a refused case): raise it
                path = self.entry_path(item_transformed)
                if not path.is_file():
                    raise
                logger.warning(f"{path}: unreadable cache entry ({type(e).__name__}: {e}); rebuilding it")
                path.unlink(missing_ok=True)
                return super()._cachecheck(item_transformed)
