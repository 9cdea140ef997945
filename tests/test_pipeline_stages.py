"""``benchmarks.pipeline_stages`` times every stage of a bundle's own inference pipeline except the network."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import BASELINE

from benchmarks import pipeline_stages


def test_every_pipeline_stage_is_timed_and_the_label_map_written(phantom_dataset, tmp_path: Path) -> None:
    dataset_dir, datalist = phantom_dataset
    case = json.loads(datalist.read_text())["test"][0]["case_id"]
    out = tmp_path / "stages.json"
    assert (
        pipeline_stages.main(
            [
                "--data",
                str(dataset_dir),
                "--case",
                case,
                "--bundle",
                str(BASELINE),
                "--repeats",
                "2",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    names = list(result["stages"])
    assert names[0] == "pre: PredictionTargetd" and "pre: ZScoreNonzerod" in names
    assert names[1:4] == ["pre: LoadImageCased", "pre: EnsureChannelFirstd", "pre: CheckCased"]
    assert "inferer without the network" in names and names[-1] == "post: SaveImaged"
    assert all(len(r["times"]) == 2 and r["min"] > 0 for r in result["stages"].values())
    total = result["total_without_network"]["median"]
    assert total > 0 and result["slices_run"] > 0
    assert "| total (every stage but the network) |" in result["markdown"]
