"""Variant bundles: a base bundle plus a small ``variant.json`` stating only what differs.

A variant bundle folder holds a hand-written ``variant.json`` (and its own ``docs/README.md``); its
``configs/``, ``LICENSE`` and ``docs/data_license.txt`` are generated from the base bundle so that the folder
works on its own (MONAI Label, MONAI Deploy and ``python -m monai.bundle`` need a self-contained bundle), while
the configuration is written only once. ``variant.json``::

    {
        "base": "../raagr2_baseline",                      # relative to the variant folder
        "configs": {"train.json": {"network_def#sharing": "depthwise"}, ...},   # MONAI ``#`` ids
        "metadata": {"name": "...", "version": "...", "changelog": {...}}       # replaces these keys
    }

Regenerate with ``python -m raagr2_tools.authoring.generate bundles/<variant>``; ``--check`` exits 1 when
the generated files are stale (the test suite runs it, so a hand edit of a generated file cannot go unnoticed).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from custom_modules.files import json_text

from .config import apply_overrides

VARIANT_FILE = "variant.json"
COPIED_FILES = ("LICENSE", "docs/data_license.txt", "configs/logging.conf")


def load_variant_spec(variant_dir: str | Path) -> dict[str, Any]:
    """Read ``<variant_dir>/variant.json``; raises ValueError naming the file when it is missing or malformed."""
    path = Path(variant_dir) / VARIANT_FILE
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} not found: a variant bundle needs a {VARIANT_FILE}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(spec, dict) or "base" not in spec:
        raise ValueError(f"{path} must be an object with a 'base' bundle folder")
    return spec


#: the first key of every generated config (not metadata.json, whose schema is fixed): says where it comes from
GENERATED_KEY = "_generated_"


def generated_note(variant_dir: str | Path, config_name: str, base: str) -> str:
    """The :data:`GENERATED_KEY` text of a generated config."""
    folder = Path(variant_dir).name
    return (
        f"GENERATED from {base}/configs/{config_name} and variant.json by "
        f"`python -m raagr2_tools.authoring.generate bundles/{folder}`: edit those, not this file"
    )


def render_variant_bundle(
    base_dir: Path, spec: Mapping[str, Any], variant_dir: str | Path = ""
) -> dict[str, str | bytes]:
    """Every generated file of the variant: relative path -> content (text for JSON, bytes for copies)."""
    overrides: Mapping[str, Mapping[str, Any]] = spec.get("configs", {})
    unknown = [name for name in overrides if not (base_dir / "configs" / name).is_file()]
    if unknown:
        raise ValueError(f"variant overrides name config files that {base_dir}/configs lacks: {unknown}")
    files: dict[str, str | bytes] = {}
    for path in sorted((base_dir / "configs").glob("*.json")):
        config = json.loads(path.read_text())
        if path.name == "metadata.json":
            config.update(copy.deepcopy(dict(spec.get("metadata", {}))))
        else:
            config = apply_overrides(config, overrides.get(path.name, {}))
            if isinstance(config, dict):
                note = generated_note(variant_dir or base_dir, path.name, spec["base"])
                config = {GENERATED_KEY: note, **{k: v for k, v in config.items() if k != GENERATED_KEY}}
        files[f"configs/{path.name}"] = json_text(config)
    for name in COPIED_FILES:
        files[name] = (base_dir / name).read_bytes()
    return files


def write_variant_bundle(variant_dir: str | Path, check: bool = False) -> list[str]:
    """Generate the variant's files from its ``variant.json``; with ``check`` only list the stale ones."""
    variant_dir = Path(variant_dir)
    spec = load_variant_spec(variant_dir)
    base_dir = (variant_dir / spec["base"]).resolve()
    stale = []
    for name, content in render_variant_bundle(base_dir, spec, variant_dir.resolve()).items():
        target = variant_dir / name
        data = content.encode() if isinstance(content, str) else content
        if target.is_file() and target.read_bytes() == data:
            continue
        stale.append(name)
        if not check:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return stale
