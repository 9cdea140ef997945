"""The ONNX-only runner (``custom_modules/onnx_runner.py``): MONAI's window placement and blending, named dynamic
axes, the contract in the exported file, and the same label map as ``run inference`` in an environment that has
neither torch nor MONAI."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import REAL_CASES, REPO_ROOT, pinned_venv

from custom_modules import onnx_runner
from custom_modules.onnx_runner import CONTRACT_KEY, RunnerError, window_starts
from raagr2_tools.jobs.bundle_cli import run_bundle
from raagr2_tools.shipping.onnx import DYNAMIC_AXIS_NAMES, export_onnx

RUNNER = REPO_ROOT / "custom_modules" / "onnx_runner.py"
#: the runner's whole dependency list, pinned as in requirements.txt
RUNNER_PACKAGES = ("onnxruntime", "nibabel", "numpy")


@pytest.mark.parametrize(
    ("size", "window", "overlap"), [(240, 240, 0.25), (300, 240, 0.25), (70, 32, 0.5), (33, 32, 0.25)]
)
def test_window_starts_are_monais(size: int, window: int, overlap: float) -> None:
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    interval = _get_scan_interval((size,), (window,), 1, (overlap,))
    expected = [s[0].start for s in dense_patch_slices((size,), (window,), interval)]
    assert window_starts(size, window, overlap) == expected


@pytest.mark.parametrize(("shape", "window", "overlap"), [((30, 50), (32, 32), 0.25), ((70, 40), (32, 32), 0.5)])
def test_windowed_output_is_monais_sliding_window(shape, window, overlap) -> None:
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    net = torch.nn.Conv2d(4, 3, 3, padding=1).eval()
    slices = torch.randn(5, 4, *shape)
    with torch.no_grad():
        expected = sliding_window_inference(slices, window, 2, net, overlap=overlap, mode="constant")

        def run(batch: np.ndarray) -> np.ndarray:
            return net(torch.from_numpy(batch)).numpy()

        got = onnx_runner._windowed(slices.numpy(), run, window, overlap, 2)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)


def test_shipped_onnx_names_its_dynamic_axes_and_a_file_without_contract_is_refused(tmp_path: Path) -> None:
    import onnx

    path = export_onnx(torch.nn.Conv2d(4, 3, 3, padding=1), tmp_path / "net.onnx", (1, 4, 32, 32))
    model = onnx.load(str(path))
    for value in (model.graph.input[0], model.graph.output[0]):
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        assert dims[0] == DYNAMIC_AXIS_NAMES[0] and dims[2:] == [DYNAMIC_AXIS_NAMES[2], DYNAMIC_AXIS_NAMES[3]]
    with pytest.raises(RunnerError, match=f"net.onnx: no '{CONTRACT_KEY}'"):
        onnx_runner.segment_case(path, [path] * 4, tmp_path / "out.nii.gz")


def _pins(names: tuple[str, ...]) -> list[str]:
    lines = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    pins = [line.strip() for line in lines if line.split("==")[0].strip() in names]
    assert len(pins) == len(names), f"requirements.txt must pin {names}"
    return pins


@pytest.fixture(scope="session")
def runner_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with only the runner's packages (pinned as in requirements.txt): no torch, no
    MONAI, not this repository."""
    env = tmp_path_factory.mktemp("onnx_runner_env") / "venv"
    python = pinned_venv(env, _pins(RUNNER_PACKAGES))
    probe = "import importlib.util as u; print([m for m in ('torch', 'monai', 'custom_modules') if u.find_spec(m)])"
    found = subprocess.run([python, "-c", probe], cwd=env, capture_output=True, text=True, check=True).stdout
    assert found.strip() == "[]", "the runner's environment must not have torch, MONAI or this repository"
    return python


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["raagr2_baseline", "raagr2_pruned_depgraph_50"])
def test_runner_reproduces_run_inference_without_torch_or_monai(
    exported_bundles: dict[str, Path], real_datalist: Path, runner_python: Path, name: str, tmp_path: Path
) -> None:
    bundle = exported_bundles[name]
    entry = json.loads(real_datalist.read_text())["test"][0]
    images = [str(REAL_CASES / p) for p in entry["image"]]
    maps = {}
    for backend in ("onnxruntime", "torch"):
        out = tmp_path / backend
        run_bundle(
            [bundle / "configs" / "inference.json"],
            "inference",
            {"bundle_root": bundle, "case_images": images, "case_id": "case", "output_dir": out, "backend": backend},
            cwd=tmp_path,
        )
        maps[backend] = nib.load(out / "case_pred.nii.gz")
    shipped = tmp_path / "scripts" / "onnx_runner.py"  # run by its path, away from the repository
    shipped.parent.mkdir()
    shipped.write_bytes(RUNNER.read_bytes())
    written = tmp_path / "runner" / "case_pred.nii.gz"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [runner_python, shipped, bundle / "models" / "model.onnx", *images, "--out", written],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    runner_map = nib.load(written)
    reference = np.asarray(maps["onnxruntime"].dataobj)
    assert reference.any(), "a trained network marks some voxels (else the comparison is vacuous)"
    np.testing.assert_array_equal(np.asarray(runner_map.dataobj), reference)
    np.testing.assert_allclose(runner_map.affine, maps["onnxruntime"].affine, atol=1e-6)
    assert runner_map.get_data_dtype() == np.uint8
    differing = int((np.asarray(runner_map.dataobj) != np.asarray(maps["torch"].dataobj)).sum())
    assert differing <= reference.size * 1e-6, f"{differing} voxels differ from the torch backend"
    described = subprocess.run(
        [runner_python, shipped, bundle / "models" / "model.onnx", "--describe"], capture_output=True, text=True
    )
    contract = json.loads(described.stdout)
    assert contract["channel_order"] == ["T1c", "T1", "T2", "FLAIR"] and contract["slice_axis"] == 2
    assert contract["label_rule"] == [["wt", 2], ["tc", 1], ["et", 4]] and contract["threshold"] == 0.5
    again = subprocess.run(
        [runner_python, shipped, bundle / "models" / "model.onnx", *images, "--out", written],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 1 and again.stderr.strip().splitlines()[-1].endswith(
        "exists; this runner never writes over a file"
    )


def test_runner_refuses_inputs_that_do_not_stack(tmp_path: Path) -> None:
    affine = np.eye(4)
    files = []
    for i, shape in enumerate([(8, 8, 4)] * 3 + [(8, 8, 5)]):
        files.append(tmp_path / f"m{i}.nii.gz")
        nib.save(nib.Nifti1Image(np.ones(shape, np.float32), affine), str(files[-1]))
    with pytest.raises(RunnerError, match=r"m3.nii.gz: shape \(8, 8, 5\) differs"):
        onnx_runner._load(files, 4)


def test_runner_imports_nothing_but_its_three_packages() -> None:
    code = RUNNER.read_text()
    imported = {
        line.split()[1].split(".")[0] for line in code.splitlines() if line.strip().startswith(("import ", "from "))
    }
    assert imported <= {"__future__", "argparse", "json", "sys", "collections", "pathlib", "typing", *RUNNER_PACKAGES}
