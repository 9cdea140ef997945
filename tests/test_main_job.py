"""The README's main job, shortened (6 phantoms, 1 epoch): every stage runs and the report is complete; and its
per-case and spread tables on made-up rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import pytest

from custom_modules.constants import REGION_DISPLAY_ORDER
from raagr2_tools.jobs.main_job import PHANTOM_SETTINGS, main, per_case_table, region_spread, spread_table

CASE_HEADER = "| case | WT Dice | TC Dice | ET Dice | WT HD95 mm | TC HD95 mm | ET HD95 mm |"


def _table_rows(text: str, header: str) -> list[list[str]]:
    """The cells of the body rows of the Markdown table that starts with ``header`` in ``text``."""
    lines = text[text.index(header) :].splitlines()[2:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def _row(case: str, wt: float, tc: float, et: float) -> dict[str, float | str]:
    return {
        "case": case,
        "wt_dice": wt,
        "tc_dice": tc,
        "et_dice": et,
        "wt_hd95": 2.0,
        "tc_hd95": 3.0,
        "et_hd95": 4.0 * wt,
        "ref_soft_dice": 0.5,
        "ref_miou": 0.5,
    }


def test_per_case_and_spread_tables() -> None:
    cases = [_row("A", 0.9, 0.5, 0.2), _row("B", 0.7, 0.1, math.nan), _row("C", 0.5, 0.3, 0.6)]
    table = per_case_table(cases)
    rows = _table_rows(table, CASE_HEADER)
    assert [r[0] for r in rows] == ["A", "B", "C"]
    assert rows[0][1:4] == ["0.900", "0.500", "0.200"] and rows[1][3] == "n/a"  # WT, TC, ET order
    spread = region_spread(cases)
    assert spread["wt_dice"]["mean"] == pytest.approx(0.7) and spread["wt_dice"]["std"] == pytest.approx(0.2)
    assert (spread["wt_dice"]["min"], spread["wt_dice"]["median"], spread["wt_dice"]["max"]) == (0.5, 0.7, 0.9)
    assert (spread["et_dice"]["min"], spread["et_dice"]["max"]) == (0.2, 0.6)  # NaN left out
    summary = _table_rows(spread_table(spread, 3), "| metric | mean ± sd | median | min–max |")
    assert [r[0] for r in summary[:3]] == [f"{r.upper()} Dice" for r in REGION_DISPLAY_ORDER]
    assert summary[0][1:] == ["0.700 ± 0.200", "0.700", "0.500–0.900"]


#: the whole job in child processes: the slow end-to-end selection
@pytest.mark.e2e
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
    text = (tmp_path / "report.md").read_text()
    assert "| WT Dice" in text
    rows = _table_rows(text, CASE_HEADER)  # one row per test case, in the evaluation's order
    assert [r[0] for r in rows] == [c["case"] for c in report["per_case"]] and len(rows) == report["test_cases"]
    assert all(0.0 <= float(r[1]) <= 1.0 for r in rows)
    spread = _table_rows(text, "| metric | mean ± sd | median | min–max |")
    assert [r[0] for r in spread[:3]] == ["WT Dice", "TC Dice", "ET Dice"]
    assert set(report["region_spread"]["wt_dice"]) == {"mean", "std", "median", "min", "max"}
    label_map = nib.load(report["label_maps"][0])
    assert label_map.shape == (64, 64, 32)
