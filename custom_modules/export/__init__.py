"""Export of bundle networks for deployment (ONNX; TorchScript comes from ``monai.bundle ckpt_export``)."""

from .onnx import ONNX_DYNAMIC_AXES, export_onnx, onnx_max_abs_diff

__all__ = ["ONNX_DYNAMIC_AXES", "export_onnx", "onnx_max_abs_diff"]
