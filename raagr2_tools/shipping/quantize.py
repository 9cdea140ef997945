"""Static INT8 quantisation of an exported network with ONNX Runtime (QDQ, per-channel weights).

Activations are calibrated (MinMax) on real, preprocessed slices. The output head (the last ``Conv`` before the
graph output) and everything after it (e.g. an output ``Sigmoid``) stay in float, so logits and probabilities
keep full precision; see ``docs/compression.md``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from custom_modules.files import atomic_path

__all__ = ["ACTIVATION_TYPES", "QUANT_FORMATS", "SliceCalibrationReader", "head_node_names", "quantize_int8"]


class SliceCalibrationReader:
    """ORT ``CalibrationDataReader`` over (C, H, W) float32 slices, one batch-1 input ``image`` at a time."""

    def __init__(self, slices: Iterable[np.ndarray], input_name: str = "image") -> None:
        self.slices = [np.ascontiguousarray(s[None], dtype=np.float32) for s in slices]
        self.input_name = input_name
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.slices):
            return None
        self._next += 1
        return {self.input_name: self.slices[self._next - 1]}

    def rewind(self) -> None:
        self._next = 0


def head_node_names(model) -> list[str]:
    """Names of the nodes from each graph output back to (and including) the nearest ``Conv``: the head."""
    producer = {out: node for node in model.graph.node for out in node.output}
    names: list[str] = []
    for output in model.graph.output:
        node = producer.get(output.name)
        while node is not None:
            names.append(node.name)
            if node.op_type == "Conv":
                break
            node = next((producer[i] for i in node.input if i in producer), None)
    return names


#: ``activations`` -> ONNX Runtime quant type name: U8S8 (uint8 activations, int8 weights) or S8S8
ACTIVATION_TYPES = {"uint8": "QUInt8", "int8": "QInt8"}
#: ``quant_format`` -> ONNX Runtime QuantFormat name: QuantizeLinear/DequantizeLinear pairs, or QLinear operators
QUANT_FORMATS = {"qdq": "QDQ", "qoperator": "QOperator"}


def quantize_int8(
    fp32_path: str | Path,
    int8_path: str | Path,
    calibration_slices: Sequence[np.ndarray],
    per_channel: bool = True,
    activations: str = "uint8",
    quant_format: str = "qdq",
) -> dict[str, object]:
    """Write a static INT8 copy of ``fp32_path`` to ``int8_path`` (atomically); returns what was done.

    ``activations`` ``"uint8"`` (U8S8) or ``"int8"`` (S8S8), ``quant_format`` ``"qdq"`` or ``"qoperator"``
    (:data:`ACTIVATION_TYPES`, :data:`QUANT_FORMATS`); weights are int8. ``benchmarks/ort_int8_formats.py``
    measures the four combinations; the export ships the one it found fastest with accuracy kept.

    Raises:
        ValueError: with no calibration slices, or an unknown ``activations``/``quant_format``.
    """
    if activations not in ACTIVATION_TYPES or quant_format not in QUANT_FORMATS:
        raise ValueError(
            f"activations must be one of {sorted(ACTIVATION_TYPES)} and quant_format one of {sorted(QUANT_FORMATS)}, "
            f"got {activations!r}, {quant_format!r}"
        )
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not len(calibration_slices):
        raise ValueError(f"INT8 quantisation of {fp32_path} needs calibration slices; none were given")
    int8_path = Path(int8_path)
    with tempfile.TemporaryDirectory(dir=int8_path.parent, prefix=".tmp_quant_") as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")
        # symbolic shape inference cannot follow the bilinear Resize with dynamic H/W: ONNX shape inference only
        quant_pre_process(str(fp32_path), prepared, skip_symbolic_shape=True)
        model = onnx.load(prepared)
        excluded = head_node_names(model)
        out = os.path.join(tmp, "int8.onnx")
        root = logging.getLogger()
        level = root.level
        root.setLevel(max(level, logging.WARNING))  # ORT logs one INFO line per bias copy on the root logger
        try:
            quantize_static(
                prepared,
                out,
                SliceCalibrationReader(calibration_slices),
                quant_format=getattr(QuantFormat, QUANT_FORMATS[quant_format]),
                per_channel=per_channel,
                activation_type=getattr(QuantType, ACTIVATION_TYPES[activations]),
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=excluded,
            )
        finally:
            root.setLevel(level)
        quantised = onnx.load(out)
        props = {p.key: p.value for p in onnx.load(str(fp32_path), load_external_data=False).metadata_props}
        precision = (
            f"int8 ({QUANT_FORMATS[quant_format]}, {activations} activations, per-channel weights, head in float)"
        )
        onnx.helper.set_model_props(quantised, {**props, "precision": precision})
        with atomic_path(int8_path) as final:
            onnx.save(quantised, str(final))
    return {
        "calibration_slices": len(calibration_slices),
        "per_channel": per_channel,
        "float_nodes": excluded,
        "calibration": "MinMax",
        "format": QUANT_FORMATS[quant_format],
        "activations": activations,
        "weights": "int8",
    }
