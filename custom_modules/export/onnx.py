"""ONNX export with dynamic batch, height and width, bundle metadata inside, and a parity check in ONNX Runtime."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from custom_modules.handlers import atomic_path

#: list-form dynamic axes: the dict form arrives through ``fire`` with string keys and breaks dynamo export
ONNX_DYNAMIC_AXES = {"image": [0, 2, 3], "pred": [0, 2, 3]}


def export_onnx(
    net: torch.nn.Module,
    path: str | Path,
    example_shape: Sequence[int] = (1, 4, 64, 64),
    opset: int = 18,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Export ``net`` (eval mode) with the dynamo exporter to one self-contained file (no external data).

    Input ``image`` (B, C, H, W) and output ``pred`` have dynamic batch, height and width; ``metadata`` is stored
    as the model's ``metadata_props``. The file is replaced atomically.
    """
    import onnx

    net.eval()
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "dynamic_axes is not recommended when dynamo=True"
        warnings.simplefilter("ignore", FutureWarning)  # torch.export internals
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (torch.randn(*example_shape),),
            str(tmp),
            dynamo=True,
            external_data=False,
            input_names=["image"],
            output_names=["pred"],
            dynamic_axes=ONNX_DYNAMIC_AXES,
            opset_version=opset,
            verbose=False,
        )
        if metadata:
            model = onnx.load(str(tmp))
            onnx.helper.set_model_props(model, {str(k): str(v) for k, v in metadata.items()})
            onnx.save(model, str(tmp))
    return path


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
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = net(x)
        (got,) = session.run(["pred"], {"image": x.numpy()})
        if tuple(got.shape) != tuple(expected.shape):
            raise ValueError(f"{path}: ONNX output {got.shape} for input {tuple(shape)}, PyTorch {tuple(expected.shape)}")
        worst = max(worst, float((torch.from_numpy(got) - expected).abs().max()))
    return worst
