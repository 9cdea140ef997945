"""Read a bundle folder's configs: a parser with ``bundle_root`` set, the network it declares, id overrides."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

__all__ = ["apply_overrides", "bundle_network", "bundle_parser"]


def apply_overrides(config: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with each MONAI id (``a#b#0``) set to its value; missing parents are created."""
    parser = ConfigParser(copy.deepcopy(config))
    for config_id, value in overrides.items():
        parser.set(value, config_id, recursive=True)
    return parser.get()


def bundle_parser(bundle_dir: str | Path, config: str = "inference.json") -> ConfigParser:
    """A parser of ``<bundle_dir>/configs/<config>`` with ``bundle_root`` set to ``bundle_dir``.

    Raises:
        FileNotFoundError: naming the config when it is missing.
    """
    path = Path(bundle_dir) / "configs" / config
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {bundle_dir} is not a bundle folder")
    parser = ConfigParser()
    parser.read_config(path)
    parser["bundle_root"] = str(bundle_dir)
    return parser


def bundle_network(bundle_dir: str | Path, overrides: Mapping[str, Any] | None = None) -> torch.nn.Module:
    """Instantiate ``network_def`` from ``<bundle_dir>/configs/inference.json`` with optional ``#`` overrides.

    Example: ``bundle_network("bundles/raagr2_baseline", {"network_def#out_channels": 5})``.
    """
    parser = bundle_parser(bundle_dir)
    for config_id, value in (overrides or {}).items():
        parser[config_id] = value
    return parser.get_parsed_content("network_def")
