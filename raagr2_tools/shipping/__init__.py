"""Release-time shipping of bundles: TorchScript and ONNX (FP32, INT8, FP16) exports checked against PyTorch,
self-contained archives and the model-zoo checks."""

from .export import FILES, FORMATS, BundleExporter, ExportParityError, onnx_metadata
from .fp16 import convert_fp16
from .onnx import ONNX_DYNAMIC_AXES, OnnxParityError, export_onnx, onnx_max_abs_diff, onnx_parity
from .package import BundlePackager, PackagingError
from .quantize import SliceCalibrationReader, head_node_names, quantize_int8
from .zoo_checks import ZOO_CHECKS, verify_bundle

__all__ = [
    "FILES",
    "FORMATS",
    "ONNX_DYNAMIC_AXES",
    "ZOO_CHECKS",
    "BundleExporter",
    "BundlePackager",
    "ExportParityError",
    "OnnxParityError",
    "PackagingError",
    "SliceCalibrationReader",
    "convert_fp16",
    "export_onnx",
    "head_node_names",
    "onnx_max_abs_diff",
    "onnx_metadata",
    "onnx_parity",
    "quantize_int8",
    "verify_bundle",
]
