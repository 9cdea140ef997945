"""The inference contract of a bundle: what ``run inference`` does around the network, stored in its ONNX files.

:func:`inference_contract` reads it from the bundle's own ``configs/inference.json`` (the instantiated inferer, the
post-processing chain) and ``configs/metadata.json``, so the ONNX file carries the values the bundle runs with and
``custom_modules/onnx_runner.py`` (shipped in every packaged bundle) can reproduce the label map from the file alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from custom_modules.constants import LABEL_PAINT_ORDER, REGION_CHANNELS
from custom_modules.inference.inferer import SLICE_AXIS
from custom_modules.onnx_runner import CONTRACT_FORMAT
from raagr2_tools.authoring.config import bundle_parser

__all__ = ["inference_contract"]

#: inference.json keys that change the map in ways the ONNX runner does not reproduce (it refuses them when set)
RUNNER_UNSUPPORTED = ("crop_to_brain", "keep_largest_component", "min_component_voxels", "et_min_voxels")


def _transform(transforms: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [t for t in transforms if str(t.get("_target_", "")).split(".")[-1] == name]
    if len(found) != 1:
        raise ValueError(f"postprocessing of inference.json: expected one {name}, found {len(found)}")
    return found[0]


def inference_contract(bundle_root: str | Path) -> dict[str, Any]:
    """The JSON-ready contract of the bundle at ``bundle_root`` (see :mod:`custom_modules.onnx_runner`)."""
    bundle_root = Path(bundle_root)
    meta = json.loads((bundle_root / "configs" / "metadata.json").read_text())
    image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    parser = bundle_parser(bundle_root)
    inferer = parser.get_parsed_content("inferer")
    post = parser.get("postprocessing", {}).get("transforms", [])
    threshold = _transform(post, "RegionsFromLogitsd").get("threshold", 0.5)
    if isinstance(threshold, str) and threshold.startswith("@"):
        threshold = parser.get_parsed_content(threshold[1:])
    outputs = [pred["channel_def"][str(i)].lower() for i in range(len(pred["channel_def"]))]
    if tuple(outputs) != REGION_CHANNELS:
        raise ValueError(f"metadata.json output channels {outputs} are not {REGION_CHANNELS}")
    return {
        "format": CONTRACT_FORMAT,
        "bundle": meta.get("name", bundle_root.name),
        "bundle_version": meta.get("version", ""),
        "channel_order": [image["channel_def"][str(i)] for i in range(len(image["channel_def"]))],
        "input_space": meta.get("image_classes", ""),
        "input_layout": "the voxel array as stored in each NIfTI file (nibabel dataobj, no reorientation), as float32; "
        "the four files stacked as channels, or one 4D file with the channels last",
        "normalisation": "z-score per channel over its nonzero voxels of the whole volume (mean, population std; "
        "std 0 -> 1), statistics and arithmetic in float64, then float32; zero voxels stay 0",
        "slice_axis": SLICE_AXIS,
        "window": [int(v) for v in inferer.roi_size],
        "overlap": float(inferer.slice_inferer.overlap),
        "padding": "zeros, split evenly before and after (the extra pixel after) up to the window",
        "blend": "constant: overlapping window outputs averaged",
        "batch": int(inferer.sw_batch_size),
        "skip_empty_slices": bool(inferer.skip_empty_slices),
        "background_logit": float(inferer.background_logit),
        "output_channels": outputs,
        "activation": "sigmoid",
        "threshold_rule": "sigmoid(logit) >= threshold, decided as logit >= ln(threshold / (1 - threshold))",
        "threshold": float(threshold),
        "label_rule": [list(rule) for rule in LABEL_PAINT_ORDER],
        "label_values": meta["network_data_format"]["post_processed_outputs"]["pred"]["channel_def"],
        "output": "uint8 label map on the input's voxel grid, with the first input file's affine",
        "options": {
            "crop_to_brain": bool(inferer.crop_to_brain),
            **{key: parser.get_parsed_content(key) for key in RUNNER_UNSUPPORTED if key != "crop_to_brain"},
        },
    }
