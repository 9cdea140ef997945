"""Tests for custom_modules.inference backends: PyTorch, TorchScript, ONNX Runtime (FP32 and FP16) and OpenVINO FP32
networks (the reduced-precision backends and ``auto``: tests/test_backend_auto.py)."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime
import pytest
import torch
from monai.inferers import SliceInferer
from onnxruntime.transformers.float16 import convert_float_to_float16

from custom_modules.inference import (
    AUTO,
    BACKEND_FILES,
    BACKENDS,
    EXPORT_COMMAND,
    BrainSliceInferer,
    OnnxRuntimeNetwork,
    backend_network,
    onnxruntime_providers,
)
from custom_modules.inference.auto import EXACT_BACKENDS
from custom_modules.networks import RAAGR2Net
from raagr2_tools.shipping import export_onnx
from raagr2_tools.shipping.openvino import export_openvino

#: bundle runs in child processes: the slow end-to-end selection
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[RAAGR2Net, Path]:
    """A tiny RAAGR2-Net and a bundle folder with its ``models/model.onnx`` (dynamic B/H/W), ``models/model.ts`` and
    ``models/model_openvino.{xml,bin}``."""
    torch.manual_seed(0)
    net = RAAGR2Net(in_channels=4, out_channels=3, features=(4, 8, 16, 32, 64), sigmoid=False).eval()
    root = tmp_path_factory.mktemp("bundle")
    (root / "models").mkdir()
    export_onnx(net, root / "models" / "model.onnx", example_shape=(1, 4, 32, 32))  # ~15 s: torch.export
    torch.jit.save(torch.jit.script(net), str(root / "models" / "model.ts"))
    export_openvino(root / "models" / "model.onnx", root / "models" / "model_openvino.xml")
    return net, root


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(2, 4, 48, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_backends_match_torch(bundle: tuple[RAAGR2Net, Path], image: torch.Tensor, backend: str) -> None:
    net, root = bundle
    runner = backend_network(backend=backend, network=net, bundle_root=str(root), device=torch.device("cpu"))
    assert (runner is net) == (backend == "torch")
    with torch.no_grad():
        expected, got = net(image), runner(image)
    assert got.shape == (2, 3, 48, 64) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_absolute_file_names_are_used_as_given(bundle: tuple[RAAGR2Net, Path], tmp_path: Path) -> None:
    net, root = bundle
    runner = backend_network("onnxruntime", net, str(tmp_path), "cpu", model_file=str(root / "models" / "model.onnx"))
    assert isinstance(runner, OnnxRuntimeNetwork) and runner.path == root / "models" / "model.onnx"


def fp16_model(path: Path, keep_io_types: bool) -> onnx.ModelProto:
    """FP16 conversion of ``path``, less the repeated identical Casts the converter writes when one value feeds a
    float32-kept op (the upsampling ``Resize``) twice: ONNX Runtime rejects the duplicate node names."""
    model = convert_float_to_float16(onnx.load(path), keep_io_types=keep_io_types)
    seen: set[bytes] = set()
    nodes = []
    for node in model.graph.node:
        key = node.SerializeToString()
        if node.op_type != "Cast" or key not in seen:
            nodes.append(node)
        seen.add(key)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


@pytest.mark.parametrize("keep_io_types", [True, False])
def test_onnxruntime_fp16_model(
    bundle: tuple[RAAGR2Net, Path], image: torch.Tensor, tmp_path: Path, keep_io_types: bool
) -> None:
    net, root = bundle
    path = tmp_path / "model_fp16.onnx"
    onnx.save(fp16_model(root / "models" / "model.onnx", keep_io_types), path)
    runner = OnnxRuntimeNetwork(path, providers=["CPUExecutionProvider"], intra_op_num_threads=1)
    expected_type = "tensor(float)" if keep_io_types else "tensor(float16)"
    assert runner.session.get_inputs()[0].type == runner.session.get_outputs()[0].type == expected_type
    with torch.no_grad():
        expected, got = net(image), runner(image)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-2, rtol=1e-2)
    assert (got - expected).abs().max() > 1e-6  # float16 inside: not the float32 model


def test_onnxruntime_network_is_a_harmless_module(bundle: tuple[RAAGR2Net, Path], image: torch.Tensor) -> None:
    _, root = bundle
    runner = OnnxRuntimeNetwork(root / "models" / "model.onnx")
    assert runner.providers == ["CPUExecutionProvider"]
    assert (runner.input_name, runner.output_name) == ("image", "pred")
    assert runner.eval() is runner and runner.train() is runner and runner.to("cpu") is runner
    assert list(runner.parameters()) == [] and runner.state_dict() == {}
    with pytest.raises(RuntimeError, match="Unexpected key"):  # a checkpoint must go to the torch network
        runner.load_state_dict({"head.weight": torch.zeros(1)})
    assert runner(image.half()).dtype == torch.float32  # any float input is cast to the model's input type

    with pytest.raises(ValueError, match="no model input named 'img'.*'image'"):
        OnnxRuntimeNetwork(root / "models" / "model.onnx", input_name="img")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        OnnxRuntimeNetwork(root / "models" / "missing.onnx")


def test_backend_errors(bundle: tuple[RAAGR2Net, Path], tmp_path: Path) -> None:
    net, _ = bundle
    listed = r"backend must be one of \('torch', 'torchscript', 'onnxruntime', .*'openvino_int8', 'auto'\), got 'trt'"
    with pytest.raises(ValueError, match=listed):
        backend_network("trt", net, str(tmp_path), "cpu")
    command = EXPORT_COMMAND.format(bundle=str(tmp_path))
    for backend, name in BACKEND_FILES.items():
        with pytest.raises(FileNotFoundError) as error:
            backend_network(backend, net, str(tmp_path), "cpu")
        assert str(tmp_path / "models" / name) in str(error.value) and command in str(error.value)


def test_every_backend_is_listed() -> None:
    assert BACKENDS == ("torch", *BACKEND_FILES) and AUTO not in BACKENDS
    assert set(EXACT_BACKENDS) <= set(BACKENDS)


def test_onnxruntime_providers() -> None:
    assert onnxruntime_providers("cpu") == ["CPUExecutionProvider"]
    gpu = onnxruntime_providers("cuda:0")
    assert gpu[-1] == "CPUExecutionProvider"
    assert gpu[:-1] == [
        p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in onnxruntime.get_available_providers()
    ]


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_backends_inside_slice_inferers(bundle: tuple[RAAGR2Net, Path], backend: str) -> None:
    net, root = bundle
    runner = backend_network(backend, net, str(root), "cpu")
    volume = torch.randn(1, 4, 32, 32, 6, generator=torch.Generator().manual_seed(2))
    volume[..., :2] = 0  # two slices without brain
    inferers = (
        SliceInferer(roi_size=(32, 32), sw_batch_size=4, spatial_dim=2, overlap=0.25),
        BrainSliceInferer(roi_size=(32, 32), sw_batch_size=4, skip_empty_slices=True),
        BrainSliceInferer(roi_size=(32, 32), sw_batch_size=4, crop_to_brain=True),
    )
    for inferer in inferers:
        with torch.no_grad():
            expected, got = inferer(volume, net), inferer(volume, runner)
        assert got.shape == (1, 3, 32, 32, 6)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
