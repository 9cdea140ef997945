"""``backend: auto`` and the OpenVINO backends: the choice from ``models/backends.json`` (fastest checked artefact
timed on this CPU, the hardware rule on another CPU, PyTorch when nothing qualifies), OpenVINO FP32 parity on
real slices, and NNCF's telemetry switched off."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from custom_modules.artefacts import artefact_entry, record_artefacts, sha256_file
from custom_modules.inference import (
    BACKEND_RECORD,
    OpenVinoNetwork,
    auto_backend,
    backend_network,
    choose_backend,
)
from custom_modules.inference import auto as auto_module
from custom_modules.networks import RAAGR2Net
from raagr2_tools.shipping import export_onnx
from raagr2_tools.shipping.backend_timing import backend_record, time_backends
from raagr2_tools.shipping.openvino import export_openvino, quantize_openvino_int8

TINY_FEATURES = (4, 8, 16, 32, 64)
PASSED = {"passed": True, "basis": "test"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[RAAGR2Net, Path]:
    """A tiny RAAGR2-Net with ``models/model.pt``, ``model.onnx``, ``model_openvino.{xml,bin}`` and
    ``model_openvino_int8.{xml,bin}``, all recorded in the manifest as exported from ``model.pt``."""
    torch.manual_seed(0)
    net = RAAGR2Net(in_channels=4, out_channels=3, features=TINY_FEATURES, sigmoid=False).eval()
    root = tmp_path_factory.mktemp("auto_bundle")
    models = root / "models"
    models.mkdir()
    torch.save(net.state_dict(), models / "model.pt")
    export_onnx(net, models / "model.onnx", example_shape=(1, 4, 32, 32), exporter="torchscript")
    export_openvino(models / "model.onnx", models / "model_openvino.xml", {"bundle": "test"})
    slices = [np.random.default_rng(i).standard_normal((4, 32, 32)).astype(np.float32) for i in range(4)]
    quantize_openvino_int8(models / "model_openvino.xml", models / "model_openvino_int8.xml", slices)
    names = [
        "model.onnx",
        "model_openvino.xml",
        "model_openvino.bin",
        "model_openvino_int8.xml",
        "model_openvino_int8.bin",
    ]
    record_artefacts(models, {"model.pt": None, **{n: "model.pt" for n in names}})
    return net, root


def write_record(root: Path, ms: dict[str, float], checks: dict[str, dict] | None = None, machine=None) -> None:
    """``models/backends.json`` with the given per-slice times, recorded in the manifest like the export does."""
    timings = {
        "input_shape": [8, 4, 240, 240],
        "warmup": 1,
        "repeats": 3,
        "threads": 2,
        "backends": {name: {"ms_per_slice": t, "times_ms": [t, t, t]} for name, t in ms.items()},
    }
    record = backend_record(timings, {name: (checks or {}).get(name, PASSED) for name in ms})
    if machine is not None:
        record["machine"] = {**record["machine"], **machine}
    models = root / "models"
    (models / BACKEND_RECORD).write_text(json.dumps(record))
    record_artefacts(models, {BACKEND_RECORD: "model.pt"})


def test_auto_runs_the_fastest_checked_backend_timed_on_this_cpu(bundle, caplog, monkeypatch) -> None:
    _, root = bundle
    amx = {"cpu_model": "Some Xeon with AMX", "cpu_flags": ["avx2", "avx512f", "avx512_bf16", "amx_bf16"]}
    monkeypatch.setattr(auto_module, "cpu_signature", lambda: amx)
    write_record(root, {"torch": 40.0, "onnxruntime": 20.0, "openvino": 18.0, "openvino_bf16": 9.0}, machine=amx)
    with caplog.at_level(logging.INFO, logger="custom_modules.inference.auto"):
        assert choose_backend("auto", root, "cpu") == "openvino_bf16"
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith("backend auto -> openvino_bf16: fastest checked backend timed on this CPU")
    assert "9.0 ms per slice vs torch 40.0 ms" in message
    runner = backend_network("auto", RAAGR2Net(features=TINY_FEATURES), root, "cpu")
    assert isinstance(runner, OpenVinoNetwork) and runner.precision == "bf16"
    # a failed check is never chosen, however fast
    failed = {"openvino_bf16": {"passed": False, "basis": "mean mask agreement WT 0.9 (need >= 0.99)"}}
    write_record(root, {"torch": 40.0, "openvino": 18.0, "openvino_bf16": 9.0}, failed, machine=amx)
    name, reason = auto_backend(root, "cpu")
    assert name == "openvino" and "openvino_bf16: check failed (mean mask agreement WT 0.9" in reason
    # the same CPU without native bfloat16: OpenVINO would run the BF16 request in f32, so it is left out
    no_bf16 = {"cpu_model": "AMD EPYC", "cpu_flags": ["avx2"]}
    monkeypatch.setattr(auto_module, "cpu_signature", lambda: no_bf16)
    write_record(root, {"torch": 40.0, "openvino": 18.0, "openvino_bf16": 17.0}, machine=no_bf16)
    name, reason = auto_backend(root, "cpu")
    assert name == "openvino" and "timed on this CPU" in reason and "openvino_bf16: no native bfloat16" in reason
    monkeypatch.setattr(auto_module, "cpu_signature", lambda: amx)
    # PyTorch wins when it was measured fastest
    write_record(root, {"torch": 5.0, "openvino": 18.0})
    assert auto_backend(root, "cpu")[0] == "torch"
    # an explicit backend is kept as given
    assert choose_backend("onnxruntime", root, "cpu") == "onnxruntime"


def test_auto_on_another_cpu_leaves_out_what_it_cannot_run_natively(bundle, monkeypatch) -> None:
    _, root = bundle
    write_record(
        root,
        {"torch": 40.0, "openvino": 18.0, "openvino_bf16": 9.0, "openvino_int8": 11.0},
        machine={"cpu_model": "Some Xeon with AMX", "cpu_flags": ["avx2", "avx512f", "avx512_bf16", "amx_bf16"]},
    )
    no_bf16 = {"cpu_model": "Older CPU", "cpu_flags": ["avx2", "avx512f", "avx512_vnni"]}
    monkeypatch.setattr(auto_module, "cpu_signature", lambda: no_bf16)
    name, reason = auto_backend(root, "cpu")
    assert name == "openvino_int8", reason
    assert "timed on another CPU (Some Xeon with AMX" in reason and "openvino_bf16: no native bfloat16" in reason
    monkeypatch.setattr(auto_module, "cpu_signature", lambda: {"cpu_model": "Old", "cpu_flags": ["avx2"]})
    name, reason = auto_backend(root, "cpu")
    assert name == "openvino" and "openvino_int8: no native INT8" in reason


def test_auto_falls_back_to_torch(bundle, tmp_path: Path) -> None:
    net, root = bundle
    # no export at all: no record
    (tmp_path / "models").mkdir()
    name, reason = auto_backend(tmp_path, "cpu")
    assert name == "torch" and "backends.json" in reason and "run export" in reason
    assert backend_network("auto", net, tmp_path, "cpu") is net
    # a GPU device runs PyTorch
    assert auto_backend(root, "cuda:0")[0] == "torch"
    # a checked artefact whose file was removed or corrupted is left out; with none left, PyTorch runs
    write_record(root, {"torch": 40.0, "onnxruntime": 20.0})
    onnx_file = root / "models" / "model.onnx"
    original = onnx_file.read_bytes()
    try:
        onnx_file.write_bytes(original[:-10])
        name, reason = auto_backend(root, "cpu")
        assert name == "torch" and "onnxruntime: " in reason and "corrupt or changed" in reason
    finally:
        onnx_file.write_bytes(original)
    # new weights make the record stale: refused, PyTorch runs
    weights = root / "models" / "model.pt"
    saved = weights.read_bytes()
    try:
        torch.save({k: v + 1 for k, v in net.state_dict().items()}, weights)
        record_artefacts(root / "models", {"model.pt": None})
        name, reason = auto_backend(root, "cpu")
        assert name == "torch" and "refused" in reason and "stale" in reason
    finally:
        weights.write_bytes(saved)
        record_artefacts(root / "models", {"model.pt": None})


def test_openvino_fp32_matches_pytorch_on_real_slices_and_reduced_precisions_differ(bundle, real_datalist) -> None:
    from conftest import BASELINE, REAL_CASES

    from raagr2_tools.shipping.cases import load_cases, sample_slices

    net, root = bundle
    cases = list(load_cases(BASELINE, REAL_CASES, real_datalist, "test", 1))
    slices, _ = sample_slices(cases, 4, 0.5)
    batch = torch.from_numpy(np.stack(slices))
    with torch.no_grad():
        expected = net(batch)
        fp32 = backend_network("openvino", net, root, "cpu")(batch)
        bf16_network = backend_network("openvino_bf16", net, root, "cpu")
        bf16 = bf16_network(batch)
        int8 = backend_network("openvino_int8", net, root, "cpu")(batch)
    assert fp32.shape == expected.shape and fp32.dtype == torch.float32
    assert float((fp32 - expected).abs().max()) <= 1e-4
    import openvino

    native_bf16 = "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert bf16_network.runs_precision == ("bf16" if native_bf16 else "f32")
    # without native bfloat16 OpenVINO runs the BF16 request in f32: then it must match like FP32 does
    reduced = (bf16, int8) if native_bf16 else (int8,)
    if not native_bf16:
        assert float((bf16 - expected).abs().max()) <= 1e-4
    for output in reduced:
        difference = float((output - expected).abs().max())
        assert 1e-6 < difference < 0.5 * float(expected.abs().max()), difference


def test_timing_records_every_backend_with_its_machine(bundle) -> None:
    net, root = bundle
    runners = {"torch": net, "openvino": OpenVinoNetwork(root / "models" / "model_openvino.xml")}
    timings = time_backends(runners, torch.randn(2, 4, 32, 32), repeats=3)
    assert set(timings["backends"]) == {"torch", "openvino"} and timings["input_shape"] == [2, 4, 32, 32]
    for entry in timings["backends"].values():
        assert len(entry["times_ms"]) == 3 and min(entry["times_ms"]) <= entry["ms_per_slice"] <= max(entry["times_ms"])
    record = backend_record(timings, {"torch": PASSED, "openvino": PASSED})
    assert set(record["machine"]) == {"cpu_model", "cpu_flags", "threads"}
    assert artefact_entry(root / "models" / "model.pt")["sha256"] == sha256_file(root / "models" / "model.pt")


def test_openvino_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "models" / "model_openvino.xml"
    bad.parent.mkdir()
    bad.write_text("<net>not an IR")
    with pytest.raises(Exception, match=r"model_openvino\.xml: OpenVINO cannot load it .*run export"):
        OpenVinoNetwork(bad)
    with pytest.raises(ValueError, match="precision must be one of"):
        OpenVinoNetwork(bad, precision="int4")
    with pytest.raises(ValueError, match="runs on the CPU only"):
        backend_network("openvino", torch.nn.Identity(), tmp_path, "cuda:0")


def test_nncf_telemetry_is_off_in_everything_the_project_runs() -> None:
    """Outside pytest (which NNCF detects itself): importing the runtime layer first leaves NNCF's no-op telemetry."""
    code = "import custom_modules, nncf.telemetry.wrapper as w; print(isinstance(w.telemetry, w.NNCFTelemetry))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip() == "False", result.stderr[-2000:]
    bare = subprocess.run(
        [sys.executable, "-c", "import nncf.telemetry.wrapper as w; print(isinstance(w.telemetry, w.NNCFTelemetry))"],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in __import__("os").environ.items() if k != "NNCF_CI"},
    )
    assert bare.stdout.strip() == "True", "without the switch NNCF would report usage (the test would be vacuous)"
