"""The MONAI Label app (``integrations/monailabel``) for real: its pinned environment, a server started on
127.0.0.1 serving a packaged bundle, ``/info`` (BraTS label names and values), ``/infer`` on a phantom 4D study
(the map equals ``run inference``'s) and a one-epoch ``/train``."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import REPO_ROOT, pinned_venv

from data_prep.stack import LABELS_DIR, stack_dataset
from raagr2_tools.jobs.bundle_cli import run_bundle
from raagr2_tools.shipping import BundlePackager

pytestmark = pytest.mark.e2e

APP = REPO_ROOT / "integrations" / "monailabel"
#: an existing environment made from the app's requirement files (skips building one; CI builds it)
PYTHON_ENV = "RAAGR2_MONAILABEL_PYTHON"


@pytest.fixture(scope="session")
def monailabel_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment installed exactly as the app's README says (both requirement files)."""
    if os.environ.get(PYTHON_ENV):
        return Path(os.environ[PYTHON_ENV])
    env = tmp_path_factory.mktemp("monailabel_env") / "venv"
    return pinned_venv(env, ["-r", APP / "requirements.txt"], ["--no-deps", "-r", APP / "requirements-nodeps.txt"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, data: bytes | None = None, timeout: float = 600) -> bytes:
    headers = {"Content-Type": "application/json"} if data is not None else {}
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


@pytest.fixture(scope="module")
def server(monailabel_python: Path, deploy_bundles: dict[str, Path], phantom_dataset, tmp_path_factory):
    """(base url, studies folder, packaged bundle, app copy of it): a MONAI Label server on 127.0.0.1."""
    root = tmp_path_factory.mktemp("monailabel")
    zipped = BundlePackager(deploy_bundles["raagr2_baseline"], root / "dist").run()
    with zipfile.ZipFile(zipped) as z:
        z.extractall(root / "bundle")
    bundle = root / "bundle" / "raagr2_baseline"
    dataset_dir, _ = phantom_dataset
    studies = root / "studies"
    assert stack_dataset(dataset_dir, studies, labels=True)
    app = root / "app"  # the app folder as a user has it (the served copy goes into app/model/)
    app.mkdir()
    for f in ("main.py", "raagr2_tasks.py", "torchvision_cpu.py"):
        (app / f).write_bytes((APP / f).read_bytes())
    port = _free_port()
    command = [str(monailabel_python), "-m", "monailabel.main", "start_server", "--app", str(app), "--studies"]
    command += [str(studies), "--host", "127.0.0.1", "--port", str(port), "--conf", "bundle", str(bundle)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"OMP_NUM_THREADS": "1", "MONAI_LABEL_TASKS_STRATEGY": "false"})
    log = (root / "server.log").open("w")
    process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                _request(f"{url}/info/", timeout=10)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("server did not start:\n" + (root / "server.log").read_text()[-4000:])
                time.sleep(2)
        yield url, studies, bundle, app / "model" / "raagr2_baseline"
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def test_info_names_the_brats_labels(server) -> None:
    url, _, _, _ = server
    info = json.loads(_request(f"{url}/info/"))
    expected = {"NCR/NET": 1, "ED": 2, "ET": 4}
    assert info["labels"] == expected
    assert info["models"]["raagr2"]["labels"] == expected and info["models"]["raagr2"]["type"] == "segmentation"


def test_infer_gives_run_inferences_map(server, tmp_path: Path) -> None:
    url, studies, bundle, _ = server
    study = sorted(p for p in studies.glob("*.nii.gz"))[0]
    case_id = study.name.removesuffix(".nii.gz")
    returned = tmp_path / "monailabel.nii.gz"
    returned.write_bytes(_request(f"{url}/infer/raagr2?image={case_id}&output=image", data=b"{}"))
    run_bundle(
        [bundle / "configs" / "inference.json"],
        "inference",
        {"case_images": [str(study)], "output_dir": tmp_path / "run", "backend": "torch"},
        cwd=tmp_path,
    )
    expected = nib.load(tmp_path / "run" / f"{case_id}_pred.nii.gz")
    got = nib.load(returned)
    assert np.asarray(expected.dataobj).any(), "a trained network marks some voxels (else the comparison is vacuous)"
    np.testing.assert_array_equal(np.asarray(got.dataobj).astype(np.uint8), np.asarray(expected.dataobj))
    np.testing.assert_allclose(got.affine, expected.affine, atol=1e-5)
    assert set(np.unique(np.asarray(got.dataobj)).tolist()) <= {0, 1, 2, 4}


def test_one_epoch_train_updates_the_served_copy_only(server) -> None:
    url, studies, bundle, served = server
    assert len(list((studies / LABELS_DIR).glob("*.nii.gz"))) >= 2
    given = hashlib.sha256((bundle / "models" / "model.pt").read_bytes()).hexdigest()
    before = hashlib.sha256((served / "models" / "model.pt").read_bytes()).hexdigest()
    params = {"max_epochs": 1, "val_split": 0.3, "device": "cpu", "multi_gpu": False}
    _request(f"{url}/train/raagr2?run_sync=true", data=json.dumps(params).encode(), timeout=1200)
    after = hashlib.sha256((served / "models" / "model.pt").read_bytes()).hexdigest()
    assert after != before, "training must write the served bundle's model.pt"
    assert hashlib.sha256((bundle / "models" / "model.pt").read_bytes()).hexdigest() == given, "the given bundle stays"
