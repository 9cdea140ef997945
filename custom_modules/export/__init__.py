"""Deployment exports of bundle networks: TorchScript, ONNX (FP32, INT8, FP16), each checked against PyTorch."""

from .bundle_export import FILES, FORMATS, BundleExporter, ExportParityError, onnx_metadata
from .fp16 import convert_fp16
from .onnx import ONNX_DYNAMIC_AXES, export_onnx, onnx_max_abs_diff
from .quantize import SliceCalibrationReader, head_node_names, quantize_int8

__all__ = [
    "FILES", "FORMATS", "BundleExporter", "ExportParityError", "onnx_metadata", "convert_fp16", "ONNX_DYNAMIC_AXES",
    "export_onnx", "onnx_max_abs_diff", "SliceCalibrationReader", "head_node_names", "quantize_int8",
]
