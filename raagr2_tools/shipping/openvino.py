"""OpenVINO IRs of an exported network: FP32 (read from the ONNX file) and INT8 (NNCF post-training quantisation
calibrated on real slices, the output head kept in float). BF16 is not a file: it is the FP32 IR compiled with
``INFERENCE_PRECISION_HINT=bf16`` (:class:`custom_modules.inference.OpenVinoNetwork`).

Telemetry: NNCF's is off once :mod:`custom_modules` is imported (:mod:`custom_modules.telemetry`); this module
imports it first, and reads ONNX with ``openvino.Core`` rather than the reporting converters.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import custom_modules  # noqa: F401  (switches NNCF telemetry off before nncf is imported)

__all__ = ["export_openvino", "openvino_head_names", "quantize_openvino_int8"]


def export_openvino(onnx_path: str | Path, xml_path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write the FP32 IR of ``onnx_path`` to ``xml_path`` (+ ``.bin``), weights kept in float32; returns ``xml_path``.

    ``metadata`` is stored in the IR's ``rt_info`` under ``raagr2``.
    """
    import openvino

    model = openvino.Core().read_model(str(onnx_path))
    for key, value in (metadata or {}).items():
        model.set_rt_info(str(value), ["raagr2", key])
    openvino.save_model(model, str(xml_path), compress_to_fp16=False)
    return Path(xml_path)


def openvino_head_names(model: Any) -> list[str]:
    """Friendly names of the operations from each model output back to (and including) the nearest Convolution."""
    names: list[str] = []
    for result in model.get_results():
        node = result.input_value(0).get_node()
        while node is not None:
            names.append(node.get_friendly_name())
            if node.get_type_name() == "Convolution":
                break
            inputs = [v.get_node() for v in node.input_values() if v.get_node().get_type_name() != "Constant"]
            node = inputs[0] if inputs else None
    return names


def quantize_openvino_int8(
    fp32_xml: str | Path, int8_xml: str | Path, calibration_slices: Sequence[np.ndarray], preset: str = "mixed"
) -> dict[str, Any]:
    """Write the NNCF INT8 IR of ``fp32_xml`` to ``int8_xml``; returns what was done.

    Activations are calibrated on ``calibration_slices`` ((C, H, W) float32, fed one at a time); weights are
    quantised per channel (symmetric), activations per tensor (``preset`` ``"mixed"``: asymmetric where they can
    be negative; ``"performance"``: symmetric). The head (:func:`openvino_head_names`) stays in float.

    Raises:
        ValueError: no calibration slices, or an unknown ``preset``.
    """
    import nncf
    import openvino

    presets = {"mixed": nncf.QuantizationPreset.MIXED, "performance": nncf.QuantizationPreset.PERFORMANCE}
    if preset not in presets:
        raise ValueError(f"preset must be one of {sorted(presets)}, got {preset!r}")
    if not len(calibration_slices):
        raise ValueError(f"INT8 quantisation of {fp32_xml} needs calibration slices; none were given")
    model = openvino.Core().read_model(str(fp32_xml))
    head = openvino_head_names(model)
    data = nncf.Dataset([np.ascontiguousarray(s[None], dtype=np.float32) for s in calibration_slices])
    quantised = nncf.quantize(
        model,
        data,
        preset=presets[preset],
        subset_size=len(calibration_slices),
        ignored_scope=nncf.IgnoredScope(names=head, validate=False),
    )
    quantised.set_rt_info("int8 (NNCF post-training, per-channel weights, head in float)", ["raagr2", "precision"])
    openvino.save_model(quantised, str(int8_xml), compress_to_fp16=False)
    return {
        "calibration_slices": len(calibration_slices),
        "float_nodes": head,
        "calibration": "NNCF min-max statistics",
        "preset": preset,
        "weights": "int8, per channel",
    }
