"""Write a pruned (or SNIP-masked) network as a standalone MONAI bundle folder.

The new bundle takes every config of the compression bundle except ``compress.json`` (so train, evaluate,
inference and multi-GPU training work exactly as on the baseline), with ``network_def`` replaced by one that
rebuilds the pruned network from ``configs/pruning_history.json`` (torch-pruning's JSON-serialisable pruning
history; see :func:`custom_modules.networks.pruned.pruned_network`). ``models/model.pt`` is a plain state_dict
(loadable with ``weights_only=True``); the metadata records the compression and ``docs/`` holds the report.

A bundle folder is never replaced silently and never left half-written: :func:`write_pruned_bundle` refuses an
existing non-empty folder unless ``overwrite``, writes into a staging folder beside it
(``<parent>/.<name>.staging-<pid>``) and renames that into place when it is complete (an old folder is moved
aside to ``.<name>.old-<pid>`` first and removed last); :func:`remove_staging_leftovers` cleans up after a
killed write.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from custom_modules.files import atomic_path, json_text
from custom_modules.handlers import save_atomic
from raagr2_tools.authoring.config import apply_overrides
from raagr2_tools.authoring.variant import GENERATED_KEY
from raagr2_tools.reports.compression import write_compression_report

__all__ = [
    "HISTORY_FILE",
    "COMPRESSION_CONFIG",
    "check_bundle_target",
    "pruned_bundle_name",
    "pruned_network_def",
    "ratio_percent_text",
    "remove_staging_leftovers",
    "write_pruned_bundle",
]

logger = logging.getLogger(__name__)

#: the pruning history inside a pruned bundle
HISTORY_FILE = "configs/pruning_history.json"
#: the compression step's config: not part of the bundles it writes
COMPRESSION_CONFIG = "compress.json"
COPIED_FILES = ("LICENSE", "docs/data_license.txt", "configs/logging.conf")


def ratio_percent_text(ratio: float) -> str:
    """``ratio`` as an exact percent with at most two decimals, no trailing zeros: 0.3 -> ``30``, 0.304 ->
    ``30.4``, 0.3333 -> ``33.33``.

    Raises:
        ValueError: a ratio whose percent needs more than two decimals (e.g. 0.33333), which no name could
            tell apart from its neighbours.
    """
    percent = float(ratio) * 100
    rounded = round(percent, 2)
    if not math.isfinite(percent) or abs(percent - rounded) > 1e-6:
        raise ValueError(
            f"config key ratio: {ratio!r} cannot be named exactly (its percent needs more than two decimals); "
            "set ratio with at most four decimals, e.g. 0.3, 0.304 or 0.3333"
        )
    return f"{rounded:.2f}".rstrip("0").rstrip(".")


def pruned_bundle_name(method: str, ratio: float, variant: str = "baseline") -> str:
    """``raagr2_pruned_<method>_<P>``, with ``_shared`` for the shared-depthwise variant.

    ``P`` is the exact percent of ``ratio`` with at most two decimals, the decimal point written ``p`` and no
    trailing zeros (:func:`ratio_percent_text`): 0.3 -> ``30``, 0.5 -> ``50``, 0.304 -> ``30p4``, 0.3333 ->
    ``33p33``. So every ratio gets its own folder (0.3 and 0.304 no longer share ``_30``), and whole percents
    keep their names. A ratio with more digits (0.33333) is refused (``ValueError``)."""
    suffix = "" if variant == "baseline" else "_shared"
    return f"raagr2_pruned_{method}_{ratio_percent_text(ratio).replace('.', 'p')}{suffix}"


def _staging_dir(bundle_dir: Path, kind: str = "staging") -> Path:
    return bundle_dir.parent / f".{bundle_dir.name}.{kind}-{os.getpid()}"


def _occupied(path: Path) -> bool:
    """``path`` exists and is not an empty folder."""
    if path.is_dir() and not path.is_symlink():
        return any(path.iterdir())
    return path.exists() or path.is_symlink()


def check_bundle_target(bundle_dir: str | Path, overwrite: bool = False) -> None:
    """Refuse to write over an existing, non-empty ``bundle_dir`` unless ``overwrite``.

    Raises:
        FileExistsError: ``bundle_dir`` exists and is not empty, and ``overwrite`` is false.
    """
    bundle_dir = Path(bundle_dir)
    if not overwrite and _occupied(bundle_dir):
        raise FileExistsError(
            f"{bundle_dir} already exists and is not empty: choose another output_dir, delete {bundle_dir}, "
            "or set the config key overwrite to true (--overwrite true) to replace it"
        )


def remove_staging_leftovers(output_dir: str | Path, name: str) -> list[Path]:
    """Clean up after a killed :func:`write_pruned_bundle` of ``<output_dir>/<name>``; returns what it removed
    or restored. Staging folders (never complete) are removed; an old bundle moved aside is put back when the
    target is missing (the kill came between the two renames), else removed. Call it only while no other
    process writes that bundle (the compression step holds its work folder's lock)."""
    output_dir = Path(output_dir)
    target = output_dir / name
    handled = []
    for old in sorted(output_dir.glob(f".{name}.old-*")):
        if not _occupied(target):
            if target.is_dir():
                target.rmdir()
            os.rename(old, target)
            logger.warning(f"restored {target} from {old.name}, left by a killed bundle write")
        else:
            shutil.rmtree(old)
            logger.warning(f"removed {old}, the replaced bundle left by a killed bundle write")
        handled.append(old)
    for staging in sorted(output_dir.glob(f".{name}.staging-*")):
        shutil.rmtree(staging)
        logger.warning(f"removed {staging}, an incomplete bundle left by a killed bundle write")
        handled.append(staging)
    return handled


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_into_place(staging: Path, bundle_dir: Path) -> None:
    """Rename the complete ``staging`` folder to ``bundle_dir``; an existing one is moved aside first and removed
    last, so at every moment ``bundle_dir`` is the old bundle, the new one, or (between two renames) missing."""
    old = None
    if bundle_dir.is_dir() and not bundle_dir.is_symlink() and not any(bundle_dir.iterdir()):
        bundle_dir.rmdir()
    elif bundle_dir.exists() or bundle_dir.is_symlink():
        old = _staging_dir(bundle_dir, "old")
        os.rename(bundle_dir, old)
    os.rename(staging, bundle_dir)
    _sync_dir(bundle_dir.parent)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()


def pruned_network_def(network_config: Mapping[str, Any], structured: bool) -> dict[str, Any]:
    """The ``network_def`` of a pruned bundle: ``network_config`` wrapped in
    :func:`custom_modules.networks.pruned.pruned_network` (structured), or unchanged (masked, same shapes)."""
    if not structured:
        return dict(network_config)
    return {
        "_target_": "custom_modules.networks.pruned.pruned_network",
        "network": dict(network_config),
        "pruning_history": f"$@bundle_root + '/{HISTORY_FILE}'",
    }


def _metadata(template: Mapping[str, Any], report: Mapping[str, Any]) -> dict[str, Any]:
    meta = json.loads(json.dumps(template))
    method, ratio, schedule = report["method"], report["ratio"], report["schedule"]
    teacher, pruned = report["complexity"]["teacher"], report["complexity"]["pruned"]
    what = "unstructured SNIP masks" if report.get("snip") else "structured channel pruning"
    meta["version"] = "0.1.0"
    meta["changelog"] = {
        "0.1.0": f"{what} of RAAGR2-Net ({report['variant']}) with {method}, ratio {ratio}, {schedule} schedule"
    }
    meta["name"] = f"RAAGR2-Net brain tumour segmentation (pruned: {method}, {ratio_percent_text(ratio)}%)"
    kd = " with knowledge distillation" if report.get("finetune", {}).get("distillation") else ""
    meta["description"] = (
        f"RAAGR2-Net ({report['variant']} variant) compressed by {what} with the {method} criterion "
        f"({report.get('criterion_reference', '')}), ratio {ratio}, {schedule} schedule, {report['allocation']} "
        f"allocation, then fine-tuned{kd}: "
        f"{pruned['params']:,} parameters (teacher {teacher['params']:,}), {pruned['flops'] / 1e9:.2f} GFLOPs per "
        f"{'x'.join(str(s) for s in report['input_shape'][2:])} slice (teacher {teacher['flops'] / 1e9:.2f}). "
        "See docs/compression_report.md."
    )
    meta.setdefault("required_packages_version", {})["torch-pruning"] = "1.6.1"
    if "optional_packages_version" in meta:
        meta["optional_packages_version"]["torch-pruning"] = "1.6.1"
    meta["compression"] = {
        "method": method,
        "criterion_reference": report.get("criterion_reference"),
        "ratio": ratio,
        "schedule": schedule,
        "allocation": report["allocation"],
        "variant": report["variant"],
        "teacher": report["teacher"],
        "params": pruned["params"],
        "nonzero_params": pruned["nonzero_params"],
        "flops": pruned["flops"],
        "teacher_params": teacher["params"],
        "teacher_flops": teacher["flops"],
        "flop_counter": report["flop_counter"],
        "input_shape": report["input_shape"],
    }
    return meta


def _readme(report: Mapping[str, Any], name: str) -> str:
    return (
        f"# {name}\n\n"
        f"A RAAGR2-Net compressed by raagr2-slim's compression step ({report['method']}, ratio {report['ratio']}, "
        f"{report['schedule']} schedule) from `{report['teacher']}`. The configs are those of the baseline bundle "
        + (
            "with the plain network: unstructured SNIP masks keep every shape, the masked weights are zeros in "
            if report.get("snip")
            else "with a `network_def` that rebuilds the pruned network from `configs/pruning_history.json`; "
        )
        + "`models/model.pt`, a plain state_dict.\n\n"
        "Commands (from the bundle's parent folder, with raagr2-slim installed):\n\n"
        "```bash\n"
        f"python -m monai.bundle run inference --config_file {name}/configs/inference.json --bundle_root {name} "
        "--dataset_dir DATA --data_list_file_path DATALIST\n"
        f"python -m monai.bundle run training --config_file {name}/configs/train.json --bundle_root {name} "
        "--dataset_dir DATA --data_list_file_path DATALIST\n"
        f"# TorchScript, ONNX FP32/INT8/FP16 into {name}/models/, each checked against PyTorch on real slices\n"
        f"python -m monai.bundle run export --config_file {name}/configs/export.json --bundle_root {name} "
        "--dataset_dir DATA --data_list_file_path DATALIST\n"
        f"# a self-contained archive DIR/{name}.zip (custom code in scripts/)\n"
        f"python -m monai.bundle run package --config_file {name}/configs/export.json --bundle_root {name} "
        "--output_dir DIR\n"
        "# one case without a datalist (T1c, T1, T2, FLAIR files), and the ONNX-only runner of the packaged bundle\n"
        f"python -m monai.bundle run inference --config_file {name}/configs/inference.json --bundle_root {name} "
        "--output_dir OUT --case_images \"['t1c.nii.gz','t1.nii.gz','t2.nii.gz','flair.nii.gz']\"\n"
        f"python {name}/scripts/onnx_runner.py {name}/models/model.onnx t1c.nii.gz t1.nii.gz t2.nii.gz flair.nii.gz "
        "--out pred.nii.gz\n"
        "```\n\n"
        "The compression report (parameters, FLOPs, channels kept per layer, WT/TC/ET Dice and HD95 of the teacher, "
        "the pruned network before and after fine-tuning) is `docs/compression_report.md`.\n"
    )


def write_pruned_bundle(
    template_dir: str | Path,
    bundle_dir: str | Path,
    network_config: Mapping[str, Any],
    pruning_history: Sequence[Any] | None,
    state_dict: Mapping[str, torch.Tensor],
    report: Mapping[str, Any],
    overwrite: bool = False,
) -> Path:
    """Write the bundle folder ``bundle_dir`` from the compression bundle ``template_dir``; returns it.

    The files go into ``<parent>/.<name>.staging-<pid>``, renamed to ``bundle_dir`` once complete: a write that
    fails or is killed leaves no bundle (or the old one), never a partial one.

    Args:
        template_dir: the compression bundle (configs, LICENSE, data licence, logging.conf).
        bundle_dir: the new bundle folder (created).
        network_config: the unpruned ``network_def`` config (``_target_`` and arguments).
        pruning_history: torch-pruning's pruning history; ``None`` for a masked (unstructured) network.
        state_dict: the pruned network's weights.
        report: the compression report (see :mod:`raagr2_tools.reports.compression`).
        overwrite: replace an existing non-empty ``bundle_dir`` (moved aside, removed once the new one is in).

    Raises:
        FileExistsError: ``bundle_dir`` exists and is not empty, and ``overwrite`` is false.
    """
    template_dir, bundle_dir = Path(template_dir), Path(bundle_dir)
    check_bundle_target(bundle_dir, overwrite)
    structured = pruning_history is not None
    network_def = pruned_network_def(network_config, structured)
    files: dict[str, str | bytes] = {}
    for path in sorted((template_dir / "configs").glob("*.json")):
        if path.name == COMPRESSION_CONFIG:
            continue
        config = json.loads(path.read_text())
        if isinstance(config, dict):
            config.pop(GENERATED_KEY, None)  # the template's note; this bundle is written, not generated
        if path.name == "metadata.json":
            config = _metadata(config, report)
        elif "network_def" in config:
            config = apply_overrides(config, {"network_def": network_def})
        files[f"configs/{path.name}"] = json_text(config)
    if structured:
        files[HISTORY_FILE] = json_text(list(pruning_history))
    for name in COPIED_FILES:
        files[name] = (template_dir / name).read_bytes()
    files["docs/README.md"] = _readme(report, bundle_dir.name)
    staging = _staging_dir(bundle_dir)
    if staging.exists():
        shutil.rmtree(staging)
    try:
        for name, content in files.items():
            with atomic_path(staging / name) as tmp:
                tmp.write_bytes(content.encode() if isinstance(content, str) else content)
        save_atomic({k: v.detach().cpu() for k, v in state_dict.items()}, staging / "models" / "model.pt")
        write_compression_report(report, staging / "docs")
        check_bundle_target(bundle_dir, overwrite)  # again: another process may have written it meanwhile
        _move_into_place(staging, bundle_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return bundle_dir
