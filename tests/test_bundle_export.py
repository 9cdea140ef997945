"""Deployment exports of every bundle through ``python -m monai.bundle run export``: TorchScript, ONNX FP32 (one
file, dynamic axes, metadata), INT8 (QDQ, per-channel, head in float), FP16; parity on real slices; the inference
backends; clear failures."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from conftest import DEPLOY_BUNDLES, EXPORT_TEST_SETTINGS, REAL_CASES, assert_label_maps_match_inputs

from custom_modules.errors import ArtefactError
from custom_modules.hardware import BF16_FLAGS, cpu_flags
from custom_modules.inference.auto import BF16_BACKENDS
from raagr2_tools.jobs.bundle_cli import bundle_command, run_bundle
from raagr2_tools.shipping import FILES, BundleExporter, ExportParityError, head_node_names

#: bundle runs in child processes: the slow end-to-end selection
pytestmark = pytest.mark.e2e

METADATA_KEYS = {
    "bundle",
    "bundle_name",
    "bundle_version",
    "channel_order",
    "normalisation",
    "output",
    "output_meaning",
}


@pytest.fixture(scope="module")
def one_case_datalist(real_datalist: Path, tmp_path_factory) -> Path:
    """The first real case only, in ``test`` (keeps whole-volume inference runs short)."""
    content = json.loads(real_datalist.read_text())
    path = tmp_path_factory.mktemp("one_case") / "datalist.json"
    path.write_text(json.dumps({"test": content["test"][:1]}))
    return path


@pytest.mark.parametrize("name", DEPLOY_BUNDLES)
def test_export_writes_every_artefact_checked_on_real_slices(exported_bundles: dict[str, Path], name: str) -> None:
    models = exported_bundles[name] / "models"
    for fmt, file in FILES.items():
        assert (models / file).is_file(), f"{name}: {file} missing"
    report = json.loads((models / "export_report.json").read_text())
    assert (models / "export_report.md").read_text().startswith(f"# Export report: {name}")
    for fmt in ("torchscript", "onnx", "openvino"):
        assert 0 <= report["formats"][fmt]["max_abs_diff"] <= 1e-4
    assert len(report["parity_slices"]) == EXPORT_TEST_SETTINGS["parity_slices"]
    assert any(r["tumour"] for r in report["parity_slices"]) and not all(r["tumour"] for r in report["parity_slices"])
    int8 = report["formats"]["onnx_int8"]
    assert (
        int8["calibration_slices"] == EXPORT_TEST_SETTINGS["calibration_slices"]
        and 0 < int8["calibration_tumour_slices"] < 8
    )
    assert not set(int8["calibration_patients"]) & set(report["dice"]["patients"]), "calibrated on scored patients"
    dice = report["dice"]["summary"]
    for fmt in ("onnx_int8", "onnx_fp16", "openvino_bf16", "openvino_int8"):
        for region in ("wt", "tc", "et"):
            delta, agreement = dice[fmt][f"{region}_dice_delta"], dice[fmt][f"{region}_dice_vs_fp32"]
            assert delta["min"] <= delta["mean"] <= delta["max"] and delta["std"] >= 0
            assert 0 <= agreement["min"] <= agreement["mean"] <= agreement["max"] <= 1
    assert not list(models.glob(".tmp_*")), "exports are staged and moved atomically"
    cpu_backends = {
        "torch",
        "torchscript",
        "onnxruntime",
        "onnxruntime_int8",
        "openvino",
        "openvino_bf16",
        "openvino_int8",
    }
    assert set(report["checks"]) == cpu_backends
    for backend in ("onnxruntime_int8", "openvino_bf16", "openvino_int8"):
        assert "mean mask agreement" in report["checks"][backend]["basis"]
    import openvino

    native_bf16 = "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    runs = report["runs_precision"]
    assert runs["openvino"] == runs["openvino_int8"] == "f32"
    assert runs["openvino_bf16"] == ("bf16" if native_bf16 else "f32")
    said_f32 = "`openvino_bf16` ran in f32 here" in (models / "export_report.md").read_text()
    assert said_f32 is not native_bf16, "the report says when BF16 ran in f32"
    record = json.loads((models / "backends.json").read_text())
    assert set(record["backends"]) == cpu_backends and record["machine"]["cpu_model"]
    assert all(len(b["times_ms"]) == 3 and b["ms_per_slice"] > 0 for b in record["backends"].values())
    manifest = json.loads((models / "manifest.json").read_text())
    assert {"backends.json", "model_openvino.bin", "model_openvino_int8.bin"} <= set(manifest["files"])


@pytest.mark.parametrize("name", DEPLOY_BUNDLES)
def test_onnx_is_one_file_with_dynamic_axes_metadata_and_parity(exported_bundles: dict[str, Path], name: str) -> None:
    bundle = exported_bundles[name]
    path = bundle / "models" / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    assert not list(path.parent.glob("*.data")) and not any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer
    )
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    for value in (model.graph.input[0], model.graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        assert [bool(dims[i].dim_param) for i in range(4)] == [True, False, True, True], value.name
    assert [model.graph.input[0].name, model.graph.output[0].name] == ["image", "pred"]
    props = {p.key: p.value for p in model.metadata_props}
    assert METADATA_KEYS <= set(props) and props["channel_order"] == "T1c,T1,T2,FLAIR" and props["bundle"] == name
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert props["bundle_version"] == meta["version"]
    # PyTorch vs ONNX Runtime at two other sizes and batch 2 (dynamic axes really dynamic)
    report = BundleExporter(bundle, REAL_CASES, "unused")
    net = report.network()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in ((2, 4, 48, 80), (1, 4, 96, 64)):
        x = torch.randn(*shape)
        with torch.no_grad():
            np.testing.assert_allclose(session.run(["pred"], {"image": x.numpy()})[0], net(x).numpy(), atol=1e-4)


@pytest.mark.parametrize("name", ["raagr2_baseline", "raagr2_pruned_depgraph_50"])
def test_int8_is_per_channel_qdq_with_float_head_and_fp16_keeps_float32_io(
    exported_bundles: dict[str, Path], name: str
) -> None:
    models = exported_bundles[name] / "models"
    int8 = onnx.load(str(models / "model_int8.onnx"))
    ops = [n.op_type for n in int8.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    inits = {t.name: t for t in int8.graph.initializer}
    per_channel = [
        n
        for n in int8.graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[1] in inits
        and len(onnx.numpy_helper.to_array(inits[n.input[1]]).shape) == 1
        and onnx.numpy_helper.to_array(inits[n.input[1]]).size > 1
    ]
    assert per_channel, "weights must have per-channel scales"
    head = [n for n in int8.graph.node if n.name in head_node_names(int8)]
    assert head and head[-1].op_type == "Conv"
    assert inits[head[-1].input[1]].data_type == onnx.TensorProto.FLOAT, "the head's weight stays float"
    assert int8.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    fp16 = onnx.load(str(models / "model_fp16.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {p.key: p.value for p in fp16.metadata_props}["precision"].startswith("float16")


def test_torchscript_embeds_inference_config_for_monai_deploy(exported_bundles: dict[str, Path]) -> None:
    bundle = exported_bundles["raagr2_pruned_depgraph_50"]
    extra = {"inference.json": "", "metadata.json": ""}
    torch.jit.load(str(bundle / "models" / "model.ts"), _extra_files=extra)
    assert json.loads(extra["inference.json"])["inferer"]["_target_"].endswith("BrainSliceInferer")
    assert json.loads(extra["metadata.json"])["version"]


@pytest.mark.parametrize("name", ["raagr2_baseline", "raagr2_pruned_depgraph_50"])
def test_inference_backends_give_the_same_label_map(exported_bundles, one_case_datalist, name, tmp_path) -> None:
    bundle = exported_bundles[name]
    maps = {}
    for backend in ("torch", "torchscript", "onnxruntime", "openvino"):
        out = tmp_path / backend
        run_bundle(
            [bundle / "configs" / "inference.json"],
            "inference",
            {
                "bundle_root": bundle,
                "dataset_dir": REAL_CASES,
                "data_list_file_path": one_case_datalist,
                "output_dir": out,
                "backend": backend,
            },
            cwd=tmp_path,
        )
        assert assert_label_maps_match_inputs(out, one_case_datalist) == 1
        (written,) = out.glob("*_pred.nii.gz")
        maps[backend] = np.asarray(nib.load(written).dataobj)
    assert maps["torch"].any(), "a trained network should mark some voxels (else the comparison is vacuous)"
    for backend in ("torchscript", "onnxruntime", "openvino"):
        differing = int((maps[backend] != maps["torch"]).sum())
        assert differing <= maps["torch"].size * 1e-6, f"{backend}: {differing} voxels differ from torch"


def test_inference_without_a_backend_key_runs_the_fastest_checked_artefact(
    exported_bundles, one_case_datalist, tmp_path
) -> None:
    import shutil

    exported = exported_bundles["raagr2_baseline"]
    bare = shutil.copytree(
        exported,
        tmp_path / "bare",
        ignore=shutil.ignore_patterns("model.ts", "model*.onnx", "model_openvino*", "backends.json"),
    )
    chosen = {}
    for name, bundle in (("exported", exported), ("bare", bare)):
        overrides = {
            "bundle_root": bundle,
            "dataset_dir": REAL_CASES,
            "data_list_file_path": one_case_datalist,
            "output_dir": tmp_path / f"out_{name}",
        }
        command = bundle_command([bundle / "configs" / "inference.json"], "inference", overrides)
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        lines = [line for line in (result.stderr + result.stdout).splitlines() if "backend auto -> " in line]
        assert len(lines) == 1, lines
        chosen[name] = lines[0].split("backend auto -> ", 1)[1]
        assert assert_label_maps_match_inputs(tmp_path / f"out_{name}", one_case_datalist) == 1
    record = json.loads((exported / "models" / "backends.json").read_text())["backends"]
    # without native bfloat16 OpenVINO runs the BF16 request in f32: auto leaves that name out
    native_bf16 = set(BF16_FLAGS) & set(cpu_flags())
    usable = {n: b for n, b in record.items() if b["check"]["passed"] and (native_bf16 or n not in BF16_BACKENDS)}
    fastest = min((b["ms_per_slice"], n) for n, b in usable.items())[1]
    assert chosen["exported"].startswith(f"{fastest}: fastest checked backend timed on this CPU"), chosen
    assert chosen["bare"].startswith("torch: no ") and "backends.json" in chosen["bare"], chosen


def test_brain_options_segment_through_the_bundle(exported_bundles, one_case_datalist, tmp_path) -> None:
    bundle = exported_bundles["raagr2_baseline"]
    out = {}
    for options in ({}, {"skip_empty_slices": True, "crop_to_brain": True}):
        folder = tmp_path / ("options" if options else "plain")
        run_bundle(
            [bundle / "configs" / "inference.json"],
            "inference",
            {
                "bundle_root": bundle,
                "dataset_dir": REAL_CASES,
                "data_list_file_path": one_case_datalist,
                "output_dir": folder,
                **options,
            },
            cwd=tmp_path,
        )
        (written,) = folder.glob("*_pred.nii.gz")
        out[bool(options)] = np.asarray(nib.load(written).dataobj)
    files = json.loads(one_case_datalist.read_text())["test"][0]["image"]
    brain = np.any([np.asarray(nib.load(REAL_CASES / f).dataobj) != 0 for f in files], axis=0)
    empty_slices = ~brain.any(axis=(0, 1))
    assert empty_slices.any() and not out[True][..., empty_slices].any(), "slices without brain are background"
    # inside the brain the crop sees what the full slice sees, up to the receptive field beyond the 8-pixel margin
    agreement = (out[True][brain] == out[False][brain]).mean()
    assert agreement > 0.99, agreement


def test_unknown_backend_and_missing_export_fail_clearly(deploy_bundles, one_case_datalist, tmp_path) -> None:
    import shutil

    bundle = shutil.copytree(
        deploy_bundles["raagr2_shared_depthwise"],
        tmp_path / "bundle",
        ignore=shutil.ignore_patterns("model.onnx", "model.ts"),
    )
    for backend, expected in (
        ("onnxruntime", "model.onnx, which does not exist"),
        ("tensorflow", "backend must be one of"),
    ):
        command = bundle_command(
            [bundle / "configs" / "inference.json"],
            "inference",
            {
                "bundle_root": bundle,
                "dataset_dir": REAL_CASES,
                "backend": backend,
                "data_list_file_path": one_case_datalist,
                "output_dir": tmp_path / "out",
            },
        )
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert result.returncode != 0 and expected in result.stderr + result.stdout, result.stderr[-2000:]
        if backend == "onnxruntime":
            assert "run export" in result.stderr + result.stdout


def test_export_without_weights_or_with_a_failing_parity_check_fails_clearly(
    deploy_bundles, real_datalist, tmp_path
) -> None:
    import shutil

    bundle = shutil.copytree(
        deploy_bundles["raagr2_baseline"],
        tmp_path / "bundle",
        ignore=shutil.ignore_patterns("model.onnx", "model_*.onnx", "model.ts", "export_report.*"),
    )
    exporter = BundleExporter(
        bundle, REAL_CASES, real_datalist, formats=("onnx",), **{**EXPORT_TEST_SETTINGS, "fp32_atol": 1e-12}
    )
    with pytest.raises(ExportParityError, match=r"model\.onnx: max \|onnx - PyTorch\|"):
        exporter.run()
    assert not (bundle / "models" / "model.onnx").exists(), "a model that failed its check is not left in models/"
    (bundle / "models" / "model.pt").unlink()
    with pytest.raises(ArtefactError, match=r"model\.pt: model file not found; rebuild it with: .*run training"):
        BundleExporter(bundle, REAL_CASES, real_datalist).run()
    with pytest.raises(ValueError, match="unknown export formats"):
        BundleExporter(bundle, REAL_CASES, real_datalist, formats=("tflite",))
