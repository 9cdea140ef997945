"""Inference backends for bundle configs, chosen by the config key ``backend`` and all called like an ``nn.Module``:
the PyTorch network, its TorchScript export, its ONNX export in ONNX Runtime (FP32 or INT8) or its OpenVINO IR
(FP32, BF16 or INT8); ``auto`` (:mod:`.auto`) picks the fastest checked one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..artefacts import EXPORT_COMMAND, rebuild_command, verify_artefact
from ..errors import ArtefactError
from .auto import AUTO, BACKEND_FILES, backend_files, choose_backend
from .openvino_network import OpenVinoNetwork

__all__ = ["BACKENDS", "EXPORT_COMMAND", "OnnxRuntimeNetwork", "backend_network", "onnxruntime_providers"]

#: the backends a bundle can run; the config key ``backend`` takes one of these or ``"auto"``
BACKENDS = ("torch", *BACKEND_FILES)

#: GPU execution providers of ONNX Runtime, most preferred first
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")

#: ONNX Runtime tensor types -> numpy dtypes accepted at the network's input and output
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def onnxruntime_providers(device: torch.device | str | None = None) -> list[str]:
    """ONNX Runtime execution providers for ``device``.

    TensorRT then CUDA (those in ``onnxruntime.get_available_providers()``) when ``device`` is a CUDA device,
    or ``None`` and ``torch.cuda.is_available()``; always ending with ``CPUExecutionProvider``.
    """
    import onnxruntime

    cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    available = onnxruntime.get_available_providers() if cuda else []
    return [p for p in GPU_PROVIDERS if p in available] + ["CPUExecutionProvider"]


class OnnxRuntimeNetwork(nn.Module):
    """An ONNX Runtime session behind the ``nn.Module`` call interface, so MONAI inferers and evaluators run it.

    ``forward(image)``: ``(B, C, H, W)`` float tensor -> ``(B, out, H, W)`` float32 tensor on ``image``'s device
    (the data go through host memory). Models with float16 input or output are cast in and out.

    The module has no parameters and an empty ``state_dict``: ``eval()``, ``train()`` and ``to()`` are harmless
    (``to()`` only moves an empty, non-persistent buffer); loading a checkpoint into it fails with unexpected keys.

    Args:
        path: the ``.onnx`` file.
        providers: execution providers, most preferred first; default :func:`onnxruntime_providers`.
        intra_op_num_threads: threads of one operator; ``None`` keeps the ONNX Runtime default.
        input_name: the model input fed with ``image``; default the session's first input.
        output_name: the model output returned; default the session's first output.

    Raises:
        FileNotFoundError: when ``path`` is not a file.
        ValueError: when a named input/output is not in the model, or its type is not float32/float16/float64.
    """

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] | None = None,
        intra_op_num_threads: int | None = None,
        input_name: str | None = None,
        output_name: str | None = None,
    ) -> None:
        super().__init__()
        import onnxruntime

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        options = onnxruntime.SessionOptions()
        if intra_op_num_threads is not None:
            options.intra_op_num_threads = int(intra_op_num_threads)
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.path), sess_options=options, providers=list(providers or onnxruntime_providers())
            )
        except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
            first = " ".join(str(e).split())[:300]
            raise ArtefactError(
                f"{self.path}: ONNX Runtime cannot load it ({type(e).__name__}: {first}); "
                f"rebuild it with: {rebuild_command(self.path)}"
            ) from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_name, self.input_dtype = _io_name_and_dtype(self.path, "input", inputs, input_name)
        self.output_name, _ = _io_name_and_dtype(self.path, "output", outputs, output_name)
        # carries the module's device through .to(); not in state_dict
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses, most preferred first."""
        return list(self.session.get_providers())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        array = image.detach().to(device="cpu", dtype=_torch_dtype(self.input_dtype)).contiguous().numpy()
        (pred,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(np.asarray(pred)).to(device=image.device, dtype=torch.float32)

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, providers={self.providers}"


def _io_name_and_dtype(path: Path, kind: str, args: Sequence[Any], name: str | None) -> tuple[str, type]:
    """Name and numpy dtype of the session input/output ``name`` (default the first) of the model at ``path``."""
    names = [a.name for a in args]
    if name is None:
        name = names[0]
    if name not in names:
        raise ValueError(f"{path}: no model {kind} named {name!r}; the model's {kind}s are {names}.")
    ort_type = args[names.index(name)].type
    if ort_type not in ORT_DTYPES:
        raise ValueError(f"{path}: model {kind} {name!r} has type {ort_type}; expected one of {sorted(ORT_DTYPES)}.")
    return name, ORT_DTYPES[ort_type]


def _torch_dtype(dtype: type) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def backend_network(
    backend: str,
    network: nn.Module,
    bundle_root: str | Path,
    device: torch.device | str,
    model_file: str | None = None,
) -> nn.Module:
    """The network a bundle runs for ``backend`` (one of :data:`BACKENDS`, or ``"auto"``), on ``device``.

    - ``"torch"``: ``network.to(device)`` (its weights are loaded by the config's ``WeightsLoader``);
    - ``"torchscript"``: ``torch.jit.load(models/model.ts, map_location=device)`` in eval mode;
    - ``"onnxruntime"``, ``"onnxruntime_int8"``: :class:`OnnxRuntimeNetwork` of ``models/model.onnx`` or
      ``models/model_int8.onnx`` with :func:`onnxruntime_providers` ``(device)``;
    - ``"openvino"``, ``"openvino_bf16"``: :class:`OpenVinoNetwork` of ``models/model_openvino.xml`` in FP32 or
      BF16; ``"openvino_int8"``: of ``models/model_openvino_int8.xml`` (CPU only);
    - ``"auto"``: :func:`~custom_modules.inference.auto.choose_backend` first (configs resolve it once, as
      ``backend_choice``, so that the weights loader knows whether PyTorch runs).

    ``network`` is unused by the exported backends. ``model_file`` replaces the backend's file (relative names
    are resolved against ``bundle_root``).

    The exported files are first checked against ``models/manifest.json`` (:func:`verify_artefact`): a corrupt
    file or one exported from other weights than the current ``model.pt`` is refused.

    Raises:
        ValueError: for an unknown ``backend``, or an OpenVINO backend on a non-CPU device.
        FileNotFoundError: when the exported model file is missing; the message gives :data:`EXPORT_COMMAND`.
        ArtefactError: a corrupt, stale or unloadable exported file; the message gives the rebuild command.
    """
    backend = choose_backend(backend, bundle_root, device) if backend == AUTO else backend
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {(*BACKENDS, AUTO)}, got {backend!r}.")
    device = torch.device(device)
    if backend == "torch":
        return network.to(device)
    if backend.startswith("openvino") and device.type != "cpu":
        raise ValueError(f"backend {backend!r} runs on the CPU only; device is {device} (use onnxruntime or torch).")
    names = [model_file] if model_file else backend_files(backend)
    paths = [Path(bundle_root) / "models" / name if model_file is None else Path(bundle_root) / name for name in names]
    path = paths[0]
    if not path.is_file():
        raise FileNotFoundError(
            f"backend {backend!r} needs the exported model {path}, which does not exist; "
            f"`{EXPORT_COMMAND.format(bundle=bundle_root)}` writes it."
        )
    for file in paths:
        verify_artefact(file)
    if backend == "torchscript":
        try:
            return torch.jit.load(str(path), map_location=device).eval()
        except Exception as e:
            first = " ".join(str(e).split())[:300]
            raise ArtefactError(
                f"{path}: torch.jit.load cannot load it ({type(e).__name__}: {first}); "
                f"rebuild it with: {rebuild_command(path)}"
            ) from None
    if backend.startswith("openvino"):
        return OpenVinoNetwork(path, precision="bf16" if backend == "openvino_bf16" else "fp32")
    return OnnxRuntimeNetwork(path, providers=onnxruntime_providers(device))
