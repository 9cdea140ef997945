"""The ONNX exporter of raagr2-slim: one function for the shipped ``model.onnx``, the per-step parity check of
the pruning engine and the benchmarks, plus the ONNX Runtime parity measurement.

The shipped graph is the dynamo exporter's at opset 18 (the defaults). The pruning engine checks every step
with the TorchScript exporter (``exporter="torchscript"``, seconds where dynamo takes ~15 s at full size) and
the compression step checks its final, merged network with the defaults, i.e. the graph that ships.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from custom_modules.files import atomic_path
from custom_modules.networks.complexity import probe_input

__all__ = [
    "DYNAMIC_AXIS_NAMES",
    "EXPORTERS",
    "ONNX_DYNAMIC_AXES",
    "name_dynamic_axes",
    "OnnxParityError",
    "export_onnx",
    "onnx_max_abs_diff",
    "onnx_parity",
]

#: list-form dynamic axes: the dict form arrives through ``fire`` with string keys and breaks dynamo export
ONNX_DYNAMIC_AXES = {"image": [0, 2, 3], "pred": [0, 2, 3]}
#: the names of the dynamic axes in the shipped file, by axis (what a PACS engineer sees in Netron or ORT)
DYNAMIC_AXIS_NAMES = {0: "batch", 2: "height", 3: "width"}
#: ``exporter`` values: torch.onnx's dynamo exporter (shipped) or its TorchScript exporter (fast checks)
EXPORTERS = ("dynamo", "torchscript")


class OnnxParityError(RuntimeError):
    """ONNX Runtime's output differs from PyTorch's by more than the tolerance."""


def export_onnx(
    net: torch.nn.Module,
    path: str | Path,
    example_shape: Sequence[int] = (1, 4, 64, 64),
    opset: int = 18,
    metadata: Mapping[str, str] | None = None,
    exporter: str = "dynamo",
) -> Path:
    """Export ``net`` (eval mode) to one self-contained ONNX file (no external data), replaced atomically.

    Input ``image`` (B, C, H, W) and output ``pred`` have dynamic batch, height and width; ``metadata`` is stored
    as the model's ``metadata_props``; ``exporter`` is one of :data:`EXPORTERS`.
    """
    import onnx

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    net.eval()
    path = Path(path)
    dynamic_axes = (
        ONNX_DYNAMIC_AXES
        if exporter == "dynamo"
        else {k: {a: f"{k}_{a}" for a in v} for k, v in ONNX_DYNAMIC_AXES.items()}
    )
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "dynamic_axes is not recommended when dynamo=True"
        warnings.simplefilter("ignore", FutureWarning)  # torch.export internals
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter
        extra = {"external_data": False} if exporter == "dynamo" else {}
        torch.onnx.export(
            net,
            (probe_input(example_shape),),
            str(tmp),
            dynamo=exporter == "dynamo",
            input_names=["image"],
            output_names=["pred"],
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            verbose=False,
            **extra,
        )
        model = onnx.load(str(tmp))
        name_dynamic_axes(model)
        if metadata:
            onnx.helper.set_model_props(model, {str(k): str(v) for k, v in metadata.items()})
        onnx.save(model, str(tmp))
    return path


def name_dynamic_axes(model) -> None:
    """Rename the symbolic dimensions of the graph's inputs and outputs (the dynamo exporter's ``s0``, ``s77``...)
    to :data:`DYNAMIC_AXIS_NAMES` by position, everywhere the symbol occurs (inputs, outputs, value_info)."""
    renamed: dict[str, str] = {}
    for value in [*model.graph.input, *model.graph.output]:
        axes = ONNX_DYNAMIC_AXES.get(value.name, [])
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if axis in axes and dim.dim_param:
                renamed.setdefault(dim.dim_param, DYNAMIC_AXIS_NAMES[axis])
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renamed:
                dim.dim_param = renamed[dim.dim_param]


def onnx_max_abs_diff(net: torch.nn.Module, path: str | Path, shapes: Sequence[Sequence[int]]) -> float:
    """Largest |ONNX Runtime - PyTorch| over random inputs of each shape in ``shapes`` (CPU provider).

    Raises:
        ValueError: when an output shape differs from PyTorch's.
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    net.eval()
    worst = 0.0
    for shape in shapes:
        x = probe_input(shape)
        with torch.no_grad():
            expected = net(x)
        (got,) = session.run(["pred"], {"image": x.numpy()})
        if tuple(got.shape) != tuple(expected.shape):
            raise ValueError(
                f"{path}: ONNX output {got.shape} for input {tuple(shape)}, PyTorch {tuple(expected.shape)}"
            )
        worst = max(worst, float((torch.from_numpy(got) - expected).abs().max()))
    return worst


def onnx_parity(
    net: torch.nn.Module,
    example_shape: Sequence[int] = (1, 4, 64, 64),
    tolerance: float = 1e-4,
    exporter: str = "dynamo",
    opset: int = 18,
) -> float:
    """Export ``net`` with :func:`export_onnx` into a temporary file and return max |ORT - PyTorch| on a random
    input of ``example_shape`` (CPU).

    Raises:
        OnnxParityError: the difference exceeds ``tolerance``.
    """
    with tempfile.TemporaryDirectory(prefix="onnx_parity_") as tmp:
        path = export_onnx(net, Path(tmp) / "network.onnx", example_shape, opset=opset, exporter=exporter)
        diff = onnx_max_abs_diff(net, path, [example_shape])
    if not diff <= tolerance:
        raise OnnxParityError(
            f"ONNX Runtime output ({exporter} exporter) differs from PyTorch by {diff:.3g} (> {tolerance})"
        )
    return diff
