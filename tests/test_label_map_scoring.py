"""Scores are computed on the label map the bundles write; the BraTS post-processing options do what they say."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.metrics import compute_dice
from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses

from custom_modules.transforms import LabelMapPostprocessing, delivered_regions, postprocess_label_map
from raagr2_tools.authoring.config import bundle_parser
from raagr2_tools.shipping import BundleExporter

REPO = Path(__file__).resolve().parents[1]
BUNDLES = ("raagr2_baseline", "raagr2_shared_depthwise", "raagr2_pruned")


def _non_nested_prediction() -> tuple[torch.Tensor, torch.Tensor]:
    """Raw TC/WT/ET logits whose TC pokes out of WT and whose ET lies outside TC, and a nested label."""
    logits = torch.full((3, 12, 12, 4), -5.0)
    logits[1, 2:8, 2:8, 1:3] = 5.0  # WT
    logits[0, 6:10, 6:10, 1:3] = 5.0  # TC, partly outside WT
    logits[2, 9:11, 9:11, 2] = 5.0  # ET, partly outside TC
    label = torch.zeros(1, 12, 12, 4)
    label[0, 2:10, 2:10, 1:3] = 2
    label[0, 6:10, 6:10, 1:3] = 1
    label[0, 8:10, 8:10, 2] = 4
    return logits, torch.as_tensor(ConvertToMultiChannelBasedOnBratsClasses()(label)).float()


def _dice(pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    return compute_dice(pred[None].float(), label[None], include_background=True, ignore_empty=False)[0]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_validation_scores_the_written_label_map(bundle: str) -> None:
    """The metric inputs of validation (and evaluation, compression reports) equal the label map written by
    inference read back as BraTS regions; on raw channels they would not (TC outside WT)."""
    logits, label = _non_nested_prediction()
    train = bundle_parser(REPO / "bundles" / bundle, "train.json")
    scored = train.get_parsed_content("validate#postprocessing", instantiate=True)({"pred": logits.clone()})["pred"]
    inference = bundle_parser(REPO / "bundles" / bundle, "inference.json")
    post = inference.get_parsed_content("postprocessing", instantiate=True).transforms
    written = logits.clone()
    for transform in post:  # everything up to the file writer: the label map that is saved
        if type(transform).__name__ in ("SaveImaged", "CaseIdToMetad"):
            break
        written = transform({"pred": written})["pred"]
    read_back = torch.as_tensor(ConvertToMultiChannelBasedOnBratsClasses()(written)).float()
    assert torch.equal(torch.as_tensor(scored).float(), read_back)
    raw = (torch.sigmoid(logits) > 0.5).float()
    assert not torch.allclose(_dice(raw, label), _dice(read_back, label)), "the case must tell the two apart"


def test_delivered_regions_nest() -> None:
    logits, _ = _non_nested_prediction()
    tc, wt, et = delivered_regions(logits > 0)
    assert bool((et <= tc).all()) and bool((tc <= wt).all())


def _blobs() -> torch.Tensor:
    labels = torch.zeros(1, 20, 20, 10, dtype=torch.uint8)
    labels[0, 2:10, 2:10, 2:8] = 2  # the tumour: 384 voxels
    labels[0, 4:8, 4:8, 3:6] = 1
    labels[0, 5:7, 5:7, 4] = 4  # 4 voxels of ET
    labels[0, 15:17, 15:17, 5] = 2  # a far 4-voxel false positive
    labels[0, 15:18, 2:5, 1:4] = 2  # a 27-voxel one
    return labels


def test_keep_largest_component() -> None:
    out = postprocess_label_map(_blobs(), LabelMapPostprocessing(keep_largest_component=True))
    assert int((out > 0).sum()) == 384 and int((out == 4).sum()) == 4


def test_min_component_voxels_keeps_the_largest_and_big_enough() -> None:
    out = postprocess_label_map(_blobs(), LabelMapPostprocessing(min_component_voxels=10))
    assert int((out > 0).sum()) == 384 + 27
    tiny = postprocess_label_map(_blobs(), LabelMapPostprocessing(min_component_voxels=10_000))
    assert int((tiny > 0).sum()) == 384  # the largest component always stays


def test_small_et_relabelled_ncr() -> None:
    labels = _blobs()
    out = postprocess_label_map(labels, LabelMapPostprocessing(et_min_voxels=5))
    assert int((out == 4).sum()) == 0 and int((out == 1).sum()) == int((labels == 1).sum()) + 4
    kept = postprocess_label_map(labels, LabelMapPostprocessing(et_min_voxels=4))
    assert torch.equal(kept, labels)
    assert int((labels == 4).sum()) == 4, "the input is not modified"


def test_postprocessing_options_validated() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        LabelMapPostprocessing(min_component_voxels=-1)


def test_int8_calibration_patients_disjoint_from_scored_patients(tmp_path: Path) -> None:
    exporter = BundleExporter(REPO / "bundles" / "raagr2_baseline", tmp_path, tmp_path / "datalist.json")
    exporter._check_disjoint_patients([{"patient_id": "P1"}], [{"patient_id": "P2"}])
    with pytest.raises(ValueError, match=r"datalist\.json: calibration split 'training' .* share patients \['P1'\]"):
        exporter._check_disjoint_patients([{"patient_id": "P1"}, {"patient_id": "P3"}], [{"patient_id": "P1"}])
