"""The model-zoo CI checks (full mode, offline): the repository's bundles, trained copies, and one broken copy per
check so that no check passes vacuously."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, SCHEMA, TINY

from custom_modules.networks import RAAGR2Net
from raagr2_tools.shipping import ZOO_CHECKS, verify_bundle
from raagr2_tools.shipping.verify import main as verify_main

REPO_BUNDLES = sorted(p for p in (REPO_ROOT / "bundles").iterdir() if (p / "configs").is_dir())
#: the checks that need no trained weights (the repository's bundles have no models/model.pt in git)
STATIC_CHECKS = ["json_format", "version_in_changelog", "metadata_schema", "net_in_out"]

#: bundle runs in child processes (the slow end-to-end selection); the checks need the metadata schema
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not SCHEMA.is_file(), reason=f"schema not found at {SCHEMA}")]


def _edit_json(path: Path, edit: Callable[[dict], None], indent: int = 4) -> None:
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content, indent=indent) + "\n")


@pytest.mark.parametrize("bundle", REPO_BUNDLES, ids=lambda p: p.name)
def test_repository_bundles_pass_the_checks_that_need_no_weights(bundle: Path) -> None:
    assert verify_bundle(bundle, SCHEMA, STATIC_CHECKS) == dict.fromkeys(STATIC_CHECKS)


def test_trained_bundles_pass_every_check(deploy_bundles: dict[str, Path]) -> None:
    for name, bundle in deploy_bundles.items():
        failures = {k: v for k, v in verify_bundle(bundle, SCHEMA).items() if v is not None}
        assert not failures, f"{name}: {failures}"
        assert not (bundle / "models" / "verify_model.ts").exists(), (
            "the TorchScript check must write into a temp folder"
        )


def _wrong_width_weights(bundle: Path) -> None:
    wider = RAAGR2Net(out_channels=3, sigmoid=False, features=[2 * f for f in TINY["network_def#features"]])
    torch.save(wider.state_dict(), bundle / "models" / "model.pt")


#: check -> (how to break a bundle for it, text its failure message must contain)
BREAKS: dict[str, tuple[Callable[[Path], None], str]] = {
    "required_files": (lambda b: (b / "LICENSE").unlink(), "LICENSE"),
    "version_in_changelog": (
        lambda b: _edit_json(b / "configs" / "metadata.json", lambda m: m.update(version="9.9.9")),
        "'9.9.9' is not a key of 'changelog'",
    ),
    "metadata_schema": (
        lambda b: _edit_json(b / "configs" / "metadata.json", lambda m: m.pop("network_data_format")),
        "'network_data_format' is a required property",
    ),
    "infer_properties": (
        lambda b: _edit_json(b / "configs" / "inference.json", lambda c: c.pop("inferer")),
        "inferer",
    ),
    "net_in_out": (
        lambda b: _edit_json(
            b / "configs" / "metadata.json",
            lambda m: m["network_data_format"]["outputs"]["pred"].update(num_channels=5),
        ),
        "output channel number",
    ),
    "torchscript": (_wrong_width_weights, "size mismatch"),
    "json_format": (
        lambda b: _edit_json(b / "configs" / "inference.json", lambda c: None, indent=2),
        "inference.json (first difference at line 2)",
    ),
}


def test_every_check_has_a_negative_test() -> None:
    assert set(BREAKS) == set(ZOO_CHECKS)


@pytest.fixture
def bundle_copy(deploy_bundles: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the trained baseline bundle, free to break."""
    src = deploy_bundles["raagr2_baseline"]
    return shutil.copytree(src, tmp_path / src.name, ignore=shutil.ignore_patterns("eval", "dist", "__pycache__"))


@pytest.mark.parametrize("check", list(BREAKS))
def test_broken_bundle_fails_the_check_with_a_helpful_message(bundle_copy: Path, check: str) -> None:
    breaker, expected = BREAKS[check]
    breaker(bundle_copy)
    message = verify_bundle(bundle_copy, SCHEMA, [check])[check]
    assert message is not None and expected in message, message


def test_unloadable_torchscript_fails_naming_the_file(bundle_copy: Path) -> None:
    (bundle_copy / "models" / "model.ts").write_bytes(b"not a TorchScript archive")
    message = verify_bundle(bundle_copy, SCHEMA, ["torchscript"])["torchscript"]
    assert message is not None and "model.ts does not load" in message, message


def test_cli_prints_each_check_and_exits_1_on_failure(bundle_copy: Path, capsys: pytest.CaptureFixture) -> None:
    BREAKS["version_in_changelog"][0](bundle_copy)
    checks = ["json_format", "version_in_changelog"]
    assert verify_main([str(REPO_BUNDLES[0]), "--schema", str(SCHEMA), "--checks", *checks]) == 0
    assert verify_main([str(REPO_BUNDLES[0]), str(bundle_copy), "--schema", str(SCHEMA), "--checks", *checks]) == 1
    out = capsys.readouterr().out
    assert f"PASS {bundle_copy} json_format" in out
    assert f"FAIL {bundle_copy} version_in_changelog: ValueError:" in out
    with pytest.raises(ValueError, match="unknown checks"):
        verify_bundle(bundle_copy, SCHEMA, ["no_such_check"])
