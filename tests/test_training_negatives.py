"""Training's negative slices are brain without tumour, never empty air (README: 3 tumour : 1 brain slice)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from raagr2_tools.authoring.config import bundle_parser

REPO = Path(__file__).resolve().parents[1]


def _write_case(folder: Path) -> dict:
    """A 32x32x40 volume: brain only in slices 15-24 (the rest is air), tumour in slices 19-20."""
    rng = np.random.default_rng(0)
    image = np.zeros((32, 32, 40), np.float32)
    image[4:28, 4:28, 15:25] = rng.uniform(0.5, 1.5, (24, 24, 10))
    label = np.zeros((32, 32, 40), np.uint8)
    label[12:18, 12:18, 19:21] = 2
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("t1c", "t1", "t2", "flair"):
        paths.append(str(folder / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(image, np.eye(4)), paths[-1])
    nib.save(nib.Nifti1Image(label, np.eye(4)), folder / "seg.nii.gz")
    return {"image": paths, "label": str(folder / "seg.nii.gz")}


@pytest.mark.parametrize("bundle", ["raagr2_baseline", "raagr2_shared_depthwise"])
def test_negative_slices_hold_brain(tmp_path: Path, bundle: str) -> None:
    parser = bundle_parser(REPO / "bundles" / bundle, "train.json")
    parser["roi_size"] = [32, 32]
    parser["slices_per_case"] = 16
    preprocessing = parser.get_parsed_content("train#preprocessing", instantiate=True)
    preprocessing.set_random_state(seed=0)
    case = _write_case(tmp_path / "case")
    negatives = 0
    for _ in range(8):
        for sample in preprocessing(case):
            assert "brain" not in sample, "the helper mask is dropped after cropping"
            if not torch.as_tensor(sample["label"]).any():
                negatives += 1
                assert torch.as_tensor(sample["image"]).abs().sum() > 0, "a negative slice of empty air"
    assert negatives >= 8, "the 3:1 ratio draws negatives"
