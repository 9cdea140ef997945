"""The README's main job, shortened (6 phantoms, 1 epoch): every stage runs and the report is complete."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import pytest

from raagr2_tools.jobs.main_job import PHANTOM_SETTINGS, main

#: the whole job in child processes: the slow end-to-end selection
pytestmark = pytest.mark.e2e


def test_main_job_smoke(tmp_path: Path) -> None:
    report = main(["--workdir", str(tmp_path), "--cases", "6", "--epochs", "1"])
    assert report["parameters_spec_5ch"] == 8_911_301
    assert report["flops_per_192_slice"] > 1e10 and report["flop_counter"].endswith("FlopCounterMode")
    assert report["test_cases"] >= 1 and len(report["label_maps"]) == report["test_cases"]
    for region in ("wt", "tc", "et"):
        assert 0.0 <= report["regions"][f"{region}_dice"]["mean"] <= 1.0
    assert report["settings"]["settings_file"] == str(PHANTOM_SETTINGS.resolve())  # the JSON overlay was passed
    assert report["settings"]["roi_size"] == json.loads(PHANTOM_SETTINGS.read_text())["roi_size"]
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["regions"] == report["regions"]
    assert (tmp_path / "region_dice.png").stat().st_size > 1000
    assert "| WT Dice" in (tmp_path / "report.md").read_text()
    label_map = nib.load(report["label_maps"][0])
    assert label_map.shape == (64, 64, 32)
