"""Deployment: inference backends chosen by the bundle config key ``backend`` (PyTorch, TorchScript, ONNX Runtime
FP32/INT8, OpenVINO FP32/BF16/INT8, or ``auto``: the fastest checked one on this CPU) and an axial-slice inferer
that skips slices without brain and crops the others to the brain."""

from .auto import AUTO, BACKEND_FILES, BACKEND_RECORD, auto_backend, backend_files, choose_backend
from .backends import BACKENDS, EXPORT_COMMAND, OnnxRuntimeNetwork, backend_network, onnxruntime_providers
from .inferer import BrainSliceInferer, brain_slices
from .openvino_network import OPENVINO_PRECISIONS, OpenVinoNetwork

__all__ = [
    "AUTO",
    "BACKENDS",
    "BACKEND_FILES",
    "BACKEND_RECORD",
    "EXPORT_COMMAND",
    "OPENVINO_PRECISIONS",
    "BrainSliceInferer",
    "OnnxRuntimeNetwork",
    "OpenVinoNetwork",
    "auto_backend",
    "backend_files",
    "backend_network",
    "brain_slices",
    "choose_backend",
    "onnxruntime_providers",
]
