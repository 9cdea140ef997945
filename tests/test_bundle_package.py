"""The self-contained bundle zip: packaged with the documented command, unzipped outside the repository, it
segments the real cases and passes the model-zoo checks with this repository unimportable."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import REAL_CASES, REPO_ROOT, SCHEMA, assert_label_maps_match_inputs

from custom_modules.artefacts import MANIFEST_NAME
from raagr2_tools.jobs.bundle_cli import run_bundle
from raagr2_tools.shipping import ZOO_CHECKS, BundlePackager, PackagingError, verify_bundle
from raagr2_tools.shipping.package import MODEL_FILES
from raagr2_tools.shipping.zoo_checks import bundle_on_sys_path

#: bundle runs in child processes: the slow end-to-end selection
pytestmark = pytest.mark.e2e

#: a child process that cannot see this repository: its packages blocked, its folder off sys.path; it then runs
#: ``python -m monai.bundle <argv>`` and reports what it tried to import from the repository
NO_REPO_RUNNER = r"""
import os, runpy, sys
blocked = ("custom_modules", "raagr2_tools", "data_prep", "benchmarks")
attempts = []

class Blocker:
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in blocked:
            attempts.append(fullname)
            raise ImportError(f"{fullname} is blocked: the packaged bundle must not need this repository")

sys.meta_path.insert(0, Blocker())
sys.path[:] = [p for p in sys.path if p and not any(os.path.isdir(os.path.join(p, b)) for b in blocked)]
sys.argv = ["monai.bundle", *sys.argv[1:]]
try:
    runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
finally:
    print("REPO_IMPORTS", sorted(set(attempts) | {m for m in sys.modules if m.split(".")[0] in blocked}))
"""


def _bundle_copy(src: Path, dst: Path) -> Path:
    return shutil.copytree(src, dst, ignore=shutil.ignore_patterns("eval", "dist", "__pycache__"))


@pytest.fixture(scope="module")
def packaged(deploy_bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(zip, unzipped bundle folder): the trained baseline copy, with a ``model.ts`` and files that must stay
    behind, packaged by ``python -m monai.bundle run package`` and unzipped into a fresh folder."""
    from monai.bundle import ckpt_export

    root = tmp_path_factory.mktemp("package")
    bundle = _bundle_copy(deploy_bundles["raagr2_baseline"], root / "raagr2_baseline")
    models = bundle / "models"
    if not (models / "model.ts").is_file():
        ckpt_export(
            net_id="network_def",
            filepath=str(models / "model.ts"),
            ckpt_file=str(models / "model.pt"),
            meta_file=str(bundle / "configs" / "metadata.json"),
            config_file=str(bundle / "configs" / "inference.json"),
            bundle_root=str(bundle),
        )
    for stays_behind in ("checkpoint_last.pt", "verify_model.ts"):
        (models / stays_behind).write_bytes(b"x")
    (bundle / "variant.json").write_text("{}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        run_bundle(
            [bundle / "configs" / "export.json"],
            "package",
            {"bundle_root": bundle, "output_dir": root / "dist"},
            cwd=root,
        )
    archive = root / "dist" / "raagr2_baseline.zip"
    unzipped = tmp_path_factory.mktemp("unzipped")
    with zipfile.ZipFile(archive) as z:
        z.extractall(unzipped)
    return archive, unzipped / "raagr2_baseline"


def test_zip_holds_the_bundle_and_only_the_custom_code_it_needs(packaged: tuple[Path, Path]) -> None:
    archive, bundle = packaged
    assert stat.S_IMODE(archive.stat().st_mode) == 0o644, "the zip is world-readable"
    names = zipfile.ZipFile(archive).namelist()
    assert {n.split("/")[0] for n in names} == {"raagr2_baseline"}
    assert {n.split("/")[1] for n in names} == {"LICENSE", "configs", "docs", "models", "scripts"}
    assert {Path(n).name for n in names if n.startswith("raagr2_baseline/models/")} <= {*MODEL_FILES, MANIFEST_NAME}
    assert {"model.pt", "model.ts"} <= {p.name for p in (bundle / "models").iterdir()}
    assert {"inference.json", "metadata.json", "logging.conf"} <= {p.name for p in (bundle / "configs").iterdir()}
    scripts = bundle / "scripts"
    assert (scripts / "onnx_runner.py").is_file(), "the ONNX-only runner ships in every bundle"
    assert (scripts / "networks" / "raagr2net.py").is_file() and (
        scripts / "networks" / "blocks" / "__init__.py"
    ).is_file()
    runtime = REPO_ROOT / "custom_modules"
    shipped = sorted(p.relative_to(scripts) for p in scripts.rglob("*.py"))
    assert shipped == sorted(p.relative_to(runtime) for p in runtime.rglob("*.py"))  # the runtime layer, whole
    for relative in shipped:  # copied as it is: no rewriting of Python source
        assert (scripts / relative).read_bytes() == (runtime / relative).read_bytes(), relative
    assert not any(n.endswith("package.py") or "/compression/" in n or "/shipping/" in n for n in names)
    assert {"export.json", "compress.json"}.isdisjoint(p.name for p in (bundle / "configs").iterdir())
    for path in (bundle / "configs").glob("*.json"):
        assert "custom_modules" not in path.read_text() and "raagr2_tools" not in path.read_text(), path
    for path in (bundle / "configs").glob("*.json"):
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=4, ensure_ascii=False) + "\n", path
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert inference["bundle_root"] == {"_target_": "scripts.bundle_root"}
    assert inference["network_def"]["_target_"] == "scripts.networks.RAAGR2Net"
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert "raagr2-slim" not in meta["required_packages_version"]
    extra = {"inference.json": "", "metadata.json": ""}
    torch.jit.load(str(bundle / "models" / "model.ts"), _extra_files=extra)
    embedded = json.loads(extra["inference.json"])
    assert embedded["network_def"]["_target_"] == "scripts.networks.RAAGR2Net"
    assert embedded["bundle_root"] == {"_target_": "scripts.bundle_root"}
    assert b"custom_modules" not in extra["metadata.json"]


def test_run_package_prints_where_the_zip_went(deploy_bundles: dict[str, Path], tmp_path: Path) -> None:
    bundle = deploy_bundles["raagr2_baseline"]
    command = [sys.executable, "-m", "monai.bundle", "run", "package", "--config_file"]
    command += [str(bundle / "configs" / "export.json"), "--bundle_root", str(bundle), "--output_dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert f"package written: {tmp_path / 'raagr2_baseline.zip'}" in result.stdout.splitlines()


def test_unzipped_bundle_segments_real_cases_without_the_repository(
    packaged: tuple[Path, Path], real_datalist: Path, tmp_path: Path
) -> None:
    _, bundle = packaged
    cwd, out = tmp_path / "cwd", tmp_path / "predictions"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-c",
        NO_REPO_RUNNER,
        "run",
        "--config_file",
        str(bundle / "configs" / "inference.json"),
        "--dataset_dir",
        str(REAL_CASES),
        "--data_list_file_path",
        str(real_datalist),
        "--output_dir",
        str(out),
        "--skip_empty_slices",
        "True",
        "--crop_to_brain",
        "True",
    ]  # the fast path: seconds, not a minute
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "REPO_IMPORTS []" in result.stdout, result.stdout[-2000:]
    assert assert_label_maps_match_inputs(out, real_datalist) == 2
    assert not (bundle / "eval").exists()


@pytest.mark.skipif(not SCHEMA.is_file(), reason=f"schema not found at {SCHEMA}")
def test_unzipped_bundle_passes_the_zoo_checks_with_its_own_bundle_root(packaged: tuple[Path, Path]) -> None:
    from monai.bundle import ConfigParser

    _, bundle = packaged
    assert verify_bundle(bundle, SCHEMA) == dict.fromkeys(ZOO_CHECKS)
    parser = ConfigParser()
    parser.read_config(bundle / "configs" / "inference.json")
    with bundle_on_sys_path(bundle):
        assert parser.get_parsed_content("bundle_root") == str(bundle.resolve())
    assert "scripts" not in sys.modules


def test_imports_of_custom_code_are_rejected(deploy_bundles: dict[str, Path], tmp_path: Path) -> None:
    bundle = _bundle_copy(deploy_bundles["raagr2_baseline"], tmp_path / "raagr2_baseline")
    config = bundle / "configs" / "inference.json"
    content = json.loads(config.read_text())
    content["imports"].append("$from custom_modules.data import load_datalist")
    config.write_text(json.dumps(content, indent=4) + "\n")
    with pytest.raises(PackagingError, match=r"inference\.json: 'imports' imports custom code"):
        BundlePackager(bundle, tmp_path / "dist").run()
    assert not (tmp_path / "dist").exists()


def test_missing_weights_are_a_clear_error(deploy_bundles: dict[str, Path], tmp_path: Path) -> None:
    bundle = _bundle_copy(deploy_bundles["raagr2_baseline"], tmp_path / "raagr2_baseline")
    shutil.rmtree(bundle / "models")
    with pytest.raises(PackagingError, match=r"models/model\.pt not found"):
        BundlePackager(bundle, tmp_path / "dist").run()


def test_self_check_rejects_code_that_needs_the_repository(deploy_bundles: dict[str, Path], tmp_path: Path) -> None:
    bundle = _bundle_copy(deploy_bundles["raagr2_baseline"], tmp_path / "raagr2_baseline")
    config = bundle / "configs" / "inference.json"
    content = json.loads(config.read_text())
    content["needs_tooling"] = {"_target_": "raagr2_tools.jobs.main_job.main", "_mode_": "callable"}
    config.write_text(json.dumps(content, indent=4) + "\n")
    with pytest.raises(
        PackagingError, match=r"inference\.json names the tooling \['raagr2_tools\.jobs\.main_job\.main'\]"
    ):
        BundlePackager(bundle, tmp_path / "dist").run()
    content.pop("needs_tooling")
    content["missing"] = {"_target_": "custom_modules.transforms.NoSuchTransform", "_mode_": "callable"}
    config.write_text(json.dumps(content, indent=4) + "\n")
    with pytest.raises(PackagingError, match=r"(?s)self-check of the packaged raagr2_baseline.*NoSuchTransform"):
        BundlePackager(bundle, tmp_path / "dist").run()
    assert not list((tmp_path / "dist").glob("*.zip"))
