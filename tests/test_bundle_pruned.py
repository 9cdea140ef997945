"""The compression step of ``bundles/raagr2_pruned`` through the real ``python -m monai.bundle`` CLI, and the
standalone pruned bundles it writes: files, metadata, fresh-process loading, train/evaluate/infer/export,
unstructured SNIP, clear errors and resume after a kill."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import REAL_CASES, REPO_ROOT, SCHEMA, TINY, assert_label_maps_match_inputs

from custom_modules.networks import RAAGR2Net
from raagr2_tools.authoring.config import bundle_network
from raagr2_tools.jobs.bundle_cli import bundle_command, run_bundle

#: bundle runs in child processes: the slow end-to-end selection
pytestmark = pytest.mark.e2e

PRUNED = REPO_ROOT / "bundles" / "raagr2_pruned"
COMPRESS = [PRUNED / "configs" / "train.json", PRUNED / "configs" / "compress.json"]
BUNDLE_CONFIGS = ("train.json", "evaluate.json", "inference.json", "multi_gpu_train.json", "metadata.json")
#: TINY without the network width: a pruned bundle's ``network_def`` already holds it (inside ``pruned_network``)
TINY_PRUNED = {k: v for k, v in TINY.items() if not k.startswith("network_def")}
HISTORY_NAME = "pruning_history.json"


def _tail(result: subprocess.CompletedProcess) -> str:
    return (result.stdout or "")[-3000:] + (result.stderr or "")[-3000:]


def _save_teacher(path: Path, sharing: str) -> Path:
    torch.manual_seed(0)
    net = RAAGR2Net(out_channels=3, sigmoid=False, features=tuple(TINY["network_def#features"]), sharing=sharing)
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module", autouse=True)
def single_threaded_children():
    """Bundle runs in child processes with one OpenMP thread: the tiny networks gain nothing from two, and two
    threads on a shared 2-core machine stall at every barrier (a 10 s compression run then takes over a minute)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Randomly initialised (seeded) tiny teacher state_dicts of both variants."""
    root = tmp_path_factory.mktemp("teachers")
    return {
        "baseline": _save_teacher(root / "baseline.pt", "none"),
        "shared_depthwise": _save_teacher(root / "shared.pt", "depthwise"),
    }


def _compress_command(dataset: tuple[Path, Path], teacher: Path, output_dir: Path, **settings) -> list[str]:
    dataset_dir, datalist = dataset
    overrides = {
        **TINY,
        "bundle_root": PRUNED,
        "dataset_dir": dataset_dir,
        "data_list_file_path": datalist,
        "teacher_ckpt": teacher,
        "output_dir": output_dir,
        "epochs": 1,
        "measure_latency": False,
        **settings,
    }
    return bundle_command(COMPRESS, "compress", overrides)


def _compress(dataset, teacher: Path, output_dir: Path, cwd: Path, **settings) -> subprocess.CompletedProcess:
    command = _compress_command(dataset, teacher, output_dir, **settings)
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def depgraph_bundle(tmp_path_factory: pytest.TempPathFactory, phantom_dataset, teachers) -> Path:
    """``raagr2_pruned_depgraph_50``: DepGraph, 2 iterative steps to 50%, baseline variant (run once)."""
    out = tmp_path_factory.mktemp("compress_depgraph")
    result = _compress(
        phantom_dataset,
        teachers["baseline"],
        out,
        tmp_path_factory.mktemp("cwd"),
        method="depgraph",
        ratio=0.5,
        schedule="iterative",
        iterative_steps=2,
        variant="baseline",
    )
    assert result.returncode == 0, _tail(result)
    return out / "raagr2_pruned_depgraph_50"


@pytest.fixture(scope="module")
def snip_bundle(tmp_path_factory: pytest.TempPathFactory, phantom_dataset, teachers) -> Path:
    """``raagr2_pruned_snip_50_shared``: unstructured SNIP masks, one shot, shared-depthwise variant."""
    out = tmp_path_factory.mktemp("compress_snip")
    result = _compress(
        phantom_dataset,
        teachers["shared_depthwise"],
        out,
        tmp_path_factory.mktemp("cwd"),
        method="snip",
        ratio=0.5,
        schedule="oneshot",
        variant="shared_depthwise",
    )
    assert result.returncode == 0, _tail(result)
    return out / "raagr2_pruned_snip_50_shared"


# ----------------------------------------------------------------------------------------------------------
# 1. the structured run's bundle


def test_structured_run_writes_bundle_report_and_work_dir(depgraph_bundle: Path, teachers) -> None:
    for name in (*BUNDLE_CONFIGS, HISTORY_NAME):
        assert (depgraph_bundle / "configs" / name).is_file(), name
    assert not (depgraph_bundle / "configs" / "compress.json").exists(), (
        "the compression step is not part of the bundle"
    )
    for name in (
        "models/model.pt",
        "docs/compression_report.json",
        "docs/compression_report.md",
        "docs/compression_report.png",
        "LICENSE",
    ):
        assert (depgraph_bundle / name).is_file(), name
    state = torch.load(depgraph_bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and state["head.weight"].shape[0] == 3  # a plain state_dict
    work = depgraph_bundle.parent / f"{depgraph_bundle.name}.work"
    assert json.loads((work / "progress.json").read_text())["done"] == 2 and (work / "progress.pt").is_file()

    meta = json.loads((depgraph_bundle / "configs" / "metadata.json").read_text())
    comp = meta["compression"]
    assert (comp["method"], comp["ratio"], comp["schedule"], comp["variant"]) == (
        "depgraph",
        0.5,
        "iterative",
        "baseline",
    )
    assert comp["teacher"] == str(teachers["baseline"])
    teacher_params = sum(
        v.numel()
        for v in RAAGR2Net(out_channels=3, sigmoid=False, features=tuple(TINY["network_def#features"])).parameters()
    )
    assert comp["teacher_params"] == teacher_params
    assert 0 < comp["params"] < teacher_params and 0 < comp["flops"] < comp["teacher_flops"]

    report = json.loads((depgraph_bundle / "docs" / "compression_report.json").read_text())
    assert report["complexity"]["pruned"]["params"] == comp["params"]
    assert report["complexity"]["teacher"]["params"] == teacher_params
    steps = report["steps"]
    assert [s["step"] for s in steps] == [1, 2] and [s["target_ratio"] for s in steps] == [0.25, 0.5]
    assert steps[0]["params"] > steps[1]["params"] == comp["params"]
    for step in steps:
        assert isinstance(step["onnx_max_abs_diff"], float) and step["onnx_max_abs_diff"] <= 1e-4, step
    assert report["snip"] is None and report["layers"]
    final = report["final_onnx_check"]  # the deployed (merged) network, exported as `run export` ships it
    assert final["exporter"] == "dynamo" and final["max_abs_diff"] <= 1e-4, final
    for stage in ("teacher", "pruned_before_finetune", "finetuned"):
        assert set(report["dice"][stage]) == {"wt", "tc", "et"}, stage
    assert not (depgraph_bundle / "eval").exists() and not (depgraph_bundle / "models" / "checkpoint_last.pt").exists()


def test_structured_metadata_and_network_shapes_verify(depgraph_bundle: Path, tmp_path: Path) -> None:
    if not SCHEMA.is_file():
        pytest.skip(f"schema not found at {SCHEMA}")
    schema = tmp_path / "schema.json"
    shutil.copy(SCHEMA, schema)  # verify_metadata skips the download when the file exists
    meta = str(depgraph_bundle / "configs" / "metadata.json")
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", meta, "--filepath", str(schema)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and "metadata is verified with no error" in result.stdout + result.stderr, _tail(
        result
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "verify_net_in_out",
            "--net_id",
            "network_def",
            "--meta_file",
            meta,
            "--config_file",
            str(depgraph_bundle / "configs" / "inference.json"),
            "--bundle_root",
            str(depgraph_bundle),
            "--n",
            "2",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and "data shape of network is verified" in result.stdout + result.stderr, _tail(
        result
    )


# ----------------------------------------------------------------------------------------------------------
# 2. standalone: a copy of the folder loads in a fresh process

LOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from raagr2_tools.authoring.config import bundle_network
    root = sys.argv[1]
    net = bundle_network(root)
    net.load_state_dict(torch.load(root + "/models/model.pt", map_location="cpu", weights_only=True), strict=True)
    net.eval()
    with torch.no_grad():
        y = net(torch.randn(1, 4, 32, 32))
    print(json.dumps({"params": sum(p.numel() for p in net.parameters()), "shape": list(y.shape),
                      "finite": bool(torch.isfinite(y).all())}))
    """
)


def test_pruned_bundle_loads_in_fresh_process_from_its_folder(depgraph_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "moved" / depgraph_bundle.name
    shutil.copytree(depgraph_bundle, copy)
    for config in (copy / "configs").glob("*.json"):
        assert str(depgraph_bundle.parent) not in config.read_text(), f"{config.name} points at the output folder"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = elsewhere / "load.py"
    script.write_text(LOAD_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(copy)], cwd=elsewhere, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, _tail(result)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    meta = json.loads((copy / "configs" / "metadata.json").read_text())
    assert loaded == {"params": meta["compression"]["params"], "shape": [1, 3, 32, 32], "finite": True}


# ----------------------------------------------------------------------------------------------------------
# 3. the pruned bundle works like the baseline bundle: train, evaluate, infer, export


@pytest.fixture(scope="module")
def trained_pruned(tmp_path_factory: pytest.TempPathFactory, depgraph_bundle: Path, phantom_dataset) -> Path:
    """A copy of the pruned bundle after one tiny training epoch on the phantoms (from an unrelated cwd)."""
    root = tmp_path_factory.mktemp("pruned_trained") / depgraph_bundle.name
    shutil.copytree(depgraph_bundle, root)
    dataset_dir, datalist = phantom_dataset
    run_bundle(
        [root / "configs" / "train.json"],
        "training",
        {**TINY_PRUNED, "bundle_root": root, "dataset_dir": dataset_dir, "data_list_file_path": datalist, "epochs": 1},
        cwd=tmp_path_factory.mktemp("cwd"),
    )
    return root


def test_pruned_bundle_trains_and_evaluates(trained_pruned: Path, phantom_dataset, tmp_path: Path) -> None:
    models = trained_pruned / "models"
    assert torch.load(models / "checkpoint_last.pt", map_location="cpu", weights_only=True)["epoch"] == 1
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    bundle_network(trained_pruned).load_state_dict(state, strict=True)  # trained weights keep the pruned shapes
    assert (trained_pruned / "eval" / "val_per_case_metrics.json").is_file()

    dataset_dir, datalist = phantom_dataset
    run_bundle(
        [trained_pruned / "configs" / "train.json", trained_pruned / "configs" / "evaluate.json"],
        "run",
        {
            **TINY_PRUNED,
            "bundle_root": trained_pruned,
            "dataset_dir": dataset_dir,
            "data_list_file_path": datalist,
            "output_dir": tmp_path / "eval",
        },
        cwd=tmp_path,
    )
    report = json.loads((tmp_path / "eval" / "per_case_metrics.json").read_text())
    expected = sorted(c["case_id"] for c in json.loads(datalist.read_text())["test"])
    assert sorted(c["case"] for c in report["cases"]) == expected
    for row in report["cases"]:
        assert 0.0 <= row["wt_dice"] <= 1.0


def test_pruned_bundle_infers_real_cases(trained_pruned: Path, real_datalist: Path, tmp_path: Path) -> None:
    run_bundle(
        [trained_pruned / "configs" / "inference.json"],
        "inference",
        {
            "bundle_root": trained_pruned,
            "dataset_dir": REAL_CASES,
            "data_list_file_path": real_datalist,
            "num_workers": 0,
            "output_dir": tmp_path / "pred",
        },
        cwd=tmp_path,
    )
    assert assert_label_maps_match_inputs(tmp_path / "pred", real_datalist) == 2


def _trained_network(bundle: Path) -> torch.nn.Module:
    net = bundle_network(bundle)
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True), strict=True)
    return net.eval()


def test_pruned_bundle_ckpt_export_torchscript(trained_pruned: Path, tmp_path: Path) -> None:
    ts_file = tmp_path / "model.ts"
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "ckpt_export",
        "network_def",
        "--filepath",
        str(ts_file),
        "--ckpt_file",
        str(trained_pruned / "models" / "model.pt"),
        "--meta_file",
        str(trained_pruned / "configs" / "metadata.json"),
        "--config_file",
        str(trained_pruned / "configs" / "inference.json"),
        "--bundle_root",
        str(trained_pruned),
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, _tail(result)
    scripted = torch.jit.load(str(ts_file), map_location="cpu").eval()
    net = _trained_network(trained_pruned)
    x = torch.randn(2, 4, 32, 48)
    with torch.no_grad():
        expected, got = net(x), scripted(x)
    assert got.shape == (2, 3, 32, 48)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_pruned_bundle_onnx_export(trained_pruned: Path, tmp_path: Path) -> None:
    """MONAI's ``onnx_export`` CLI (dynamo, list-form dynamic axes) on the pruned bundle, then ORT parity."""
    from raagr2_tools.shipping import ONNX_DYNAMIC_AXES, onnx_max_abs_diff

    onnx_file = tmp_path / "model.onnx"
    converter = {
        "input_names": ["image"],
        "output_names": ["pred"],
        "dynamic_axes": ONNX_DYNAMIC_AXES,
        "opset_version": 18,
    }
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "onnx_export",
        "network_def",
        "--filepath",
        str(onnx_file),
        "--ckpt_file",
        str(trained_pruned / "models" / "model.pt"),
        "--meta_file",
        str(trained_pruned / "configs" / "metadata.json"),
        "--config_file",
        str(trained_pruned / "configs" / "inference.json"),
        "--bundle_root",
        str(trained_pruned),
        "--input_shape",
        "[1, 4, 32, 32]",
        "--converter_kwargs",
        json.dumps(converter),
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, _tail(result)
    net = _trained_network(trained_pruned)
    assert onnx_max_abs_diff(net, onnx_file, [(2, 4, 32, 48), (1, 4, 64, 32)]) <= 1e-4


# ----------------------------------------------------------------------------------------------------------
# 4. unstructured SNIP on the shared-depthwise variant


def test_snip_run_keeps_masks_and_plain_network(snip_bundle: Path) -> None:
    report = json.loads((snip_bundle / "docs" / "compression_report.json").read_text())
    snip = report["snip"]
    assert snip["masked_weights"] > 0
    assert snip["zeros_after_finetune"] == snip["zeros_before_finetune"] == snip["masked_weights"]
    assert not (snip_bundle / "configs" / HISTORY_NAME).exists()
    plain = {
        "_target_": "custom_modules.networks.RAAGR2Net",
        "in_channels": 4,
        "out_channels": 3,
        "features": TINY["network_def#features"],
        "sigmoid": False,
        "sharing": "depthwise",
    }
    for name in ("inference.json", "train.json"):
        network_def = json.loads((snip_bundle / "configs" / name).read_text())["network_def"]
        assert {k: network_def.get(k) for k in plain} == plain, name
    comp = json.loads((snip_bundle / "configs" / "metadata.json").read_text())["compression"]
    assert (comp["method"], comp["ratio"], comp["variant"]) == ("snip", 0.5, "shared_depthwise")

    # the saved weights are the masked ones: they load into the plain shared network and hold the zeros
    net = RAAGR2Net(out_channels=3, sigmoid=False, features=tuple(TINY["network_def#features"]), sharing="depthwise")
    state = torch.load(snip_bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    zeros = sum(int((p == 0).sum()) for p in net.parameters())
    assert zeros >= snip["masked_weights"]
    assert comp["nonzero_params"] <= comp["params"] - snip["masked_weights"]


# ----------------------------------------------------------------------------------------------------------
# 5. clear errors


def test_wrong_variant_teacher_and_missing_teacher_fail_clearly(phantom_dataset, teachers, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _compress(
        phantom_dataset,
        teachers["baseline"],
        out,
        tmp_path,
        method="depgraph",
        ratio=0.5,
        schedule="oneshot",
        variant="shared_depthwise",
    )
    assert result.returncode != 0
    text = result.stdout + result.stderr
    # the error line itself (the config echo at start-up also lists the path and the variant, on separate lines)
    assert any(str(teachers["baseline"]) in line and "variant" in line for line in text.splitlines()), _tail(result)
    assert not (out / "raagr2_pruned_depgraph_50_shared").exists()

    missing = tmp_path / "nowhere" / "model.pt"
    result = _compress(
        phantom_dataset, missing, out, tmp_path, method="depgraph", ratio=0.5, schedule="oneshot", variant="baseline"
    )
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert any(str(missing) in line and "not found" in line for line in text.splitlines()), _tail(result)
    assert not (out / "raagr2_pruned_depgraph_50").exists()


# ----------------------------------------------------------------------------------------------------------
# 6. a killed compression run resumes after its last finished step


def test_killed_compression_resumes(phantom_dataset, teachers, tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = _compress_command(
        phantom_dataset,
        teachers["baseline"],
        out,
        method="magnitude_l1",
        ratio=0.3,
        schedule="levelwise",
        variant="baseline",
    )
    name = "raagr2_pruned_magnitude_l1_30"
    progress_file = out / f"{name}.work" / "progress.json"

    def done() -> int:
        try:
            return int(json.loads(progress_file.read_text())["done"])
        except (OSError, ValueError, KeyError):
            return 0

    with open(tmp_path / "first_run.log", "w") as log:
        proc = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 600
            while done() < 1 and proc.poll() is None and time.time() < deadline:
                time.sleep(0.2)
            assert proc.poll() is None, (
                "the first run ended before it could be killed: " + (tmp_path / "first_run.log").read_text()[-3000:]
            )
            assert done() >= 1, "no finished step before the kill"
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
    done_at_kill = done()
    assert 1 <= done_at_kill < 5
    assert not (out / name).exists()

    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, _tail(resumed)
    assert f"resuming {name} after step {done_at_kill}" in resumed.stdout + resumed.stderr
    report = json.loads((out / name / "docs" / "compression_report.json").read_text())
    assert [s["step"] for s in report["steps"]] == [1, 2, 3, 4, 5]
    assert [s["layers"] for s in report["steps"]] == ["level5", "level4", "level3", "level2", "level1"]
    assert (out / name / "models" / "model.pt").is_file() and (out / name / "configs" / HISTORY_NAME).is_file()
    _trained_network(out / name)  # the replayed history and the final weights fit together
