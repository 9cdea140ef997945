"""The dataset of a bundle's case list: cached once on disk, in memory, or not at all (config keys ``cache``,
``cache_dir``, ``cache_rate``): :func:`case_dataset`."""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from monai.data import CacheDataset, Dataset

from ..choice import config_bool
from .case_cache import CaseCacheDataset

__all__ = ["case_dataset"]


def case_dataset(
    data: Sequence[Mapping[Hashable, Any]],
    transform: Callable,
    cache: Any = True,
    cache_dir: str | os.PathLike | None = None,
    cache_rate: float = 0.0,
    num_workers: int = 0,
    key: str = "cache",
) -> Dataset:
    """The dataset of datalist entries ``data`` through ``transform`` (a ``Compose``).

    - ``cache_rate`` > 0: MONAI's in-memory ``CacheDataset`` of that fraction of the cases (built up front with
      ``num_workers`` threads), as the bundles always did; the disk cache is not used.
    - else ``cache`` true: :class:`~custom_modules.data.CaseCacheDataset`, the deterministic part of
      ``transform`` cached once per case on disk in ``cache_dir`` (uncompressed), built by the first epoch.
    - else: no cache (``CacheDataset`` with ``cache_rate`` 0), every access runs the whole ``transform``.

    Every choice yields the same items for the same random state: only where the deterministic part comes
    from differs. ``cache`` goes through :func:`~custom_modules.choice.config_bool` (``--cache false`` on the
    command line is the text ``'false'``); ``key`` names it in errors.

    Raises:
        ValueError: ``cache`` is not a boolean, ``cache_rate`` is not in [0, 1], or ``cache`` is true and
            ``cache_dir`` is empty.
    """
    rate = float(cache_rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"config key cache_rate: {cache_rate!r} is not a fraction in [0, 1]")
    if rate > 0 or not config_bool(cache, key):
        return CacheDataset(data, transform, cache_rate=rate, num_workers=num_workers)
    if not cache_dir:
        raise ValueError(f"config key {key} is true but cache_dir is empty; set cache_dir or --{key} false")
    return CaseCacheDataset(data, transform, cache_dir)
