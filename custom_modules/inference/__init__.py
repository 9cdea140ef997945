"""Deployment: inference backends chosen by the bundle config key ``backend`` (PyTorch, TorchScript, ONNX
Runtime) and an axial-slice inferer that skips slices without brain and crops the others to the brain."""

from .backends import BACKENDS, EXPORT_COMMAND, OnnxRuntimeNetwork, backend_network, onnxruntime_providers
from .inferer import BrainSliceInferer, brain_slices

__all__ = [
    "BACKENDS",
    "EXPORT_COMMAND",
    "BrainSliceInferer",
    "OnnxRuntimeNetwork",
    "backend_network",
    "brain_slices",
    "onnxruntime_providers",
]
