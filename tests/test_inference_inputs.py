"""``inference.json`` loads a case in two steps with MONAI's ``EnsureChannelFirstd`` between them, so that an app
which drops the loader (MONAI Deploy's bundle operator removes every transform named ``*LoadImage*``) and hands
the pipeline a channels-last image in memory gets the same network input, with the same input checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose

from custom_modules.errors import CaseInputError
from custom_modules.transforms import CheckCased, LoadCased, LoadImageCased

BUNDLES = sorted(p for p in (REPO_ROOT / "bundles").iterdir() if (p / "configs" / "inference.json").is_file())


def _preprocessing(bundle: Path, output_dir: Path) -> list:
    parser = ConfigParser()
    parser.read_config(bundle / "configs" / "inference.json")
    parser["output_dir"] = str(output_dir)
    return list(parser.get_parsed_content("preprocessing").transforms)


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_inference_json_moves_channels_explicitly(bundle: Path) -> None:
    steps = json.loads((bundle / "configs" / "inference.json").read_text())["preprocessing"]["transforms"]
    names = [s["_target_"].rsplit(".", 1)[-1] for s in steps]
    load = names.index("LoadImageCased")
    assert names[load : load + 3] == ["LoadImageCased", "EnsureChannelFirstd", "CheckCased"]
    assert not any("ensure_channel_first" in s for s in steps)


def test_in_memory_channels_last_image_gives_the_file_pipelines_input(phantom_dataset, tmp_path: Path) -> None:
    dataset_dir, datalist = phantom_dataset
    entry = json.loads(datalist.read_text())["validation"][0]
    entry = {"case_id": "P1", "image": [str(dataset_dir / f) for f in entry["image"]]}
    steps = _preprocessing(REPO_ROOT / "bundles" / "raagr2_baseline", tmp_path)
    from_files = Compose(steps)(dict(entry))["image"]

    # as an app has it in memory: channels last, the file's affine, no loader in the pipeline
    stacked = LoadCased("image")(dict(entry))["image"]  # (C, H, W, D)
    channels_last = MetaTensor(
        torch.as_tensor(np.moveaxis(np.asarray(stacked), 0, -1)),
        affine=stacked.affine,
        meta={"original_channel_dim": -1, "filename_or_obj": "series stack"},
    )
    without_loader = [s for s in steps if "LoadImage" not in type(s).__name__]
    in_memory = Compose(without_loader)({"image": channels_last, "case_id": entry["case_id"]})["image"]
    assert tuple(in_memory.shape) == tuple(from_files.shape) and in_memory.shape[0] == 4
    assert torch.equal(torch.as_tensor(in_memory), torch.as_tensor(from_files))
    assert np.allclose(np.asarray(in_memory.affine), np.asarray(from_files.affine))


def test_checks_name_the_in_memory_source() -> None:
    three = MetaTensor(torch.rand(8, 8, 4, 3), meta={"original_channel_dim": -1, "filename_or_obj": "MR series 1"})
    from monai.transforms import EnsureChannelFirstd

    d = EnsureChannelFirstd("image")({"image": three, "case_id": "P9"})
    with pytest.raises(CaseInputError, match=r"P9.*MR series 1: 3 image channels, the network takes 4"):
        CheckCased("image")(d)
    anonymous = EnsureChannelFirstd("image")(
        {"image": MetaTensor(torch.zeros(4, 8, 8, 4), meta={"original_channel_dim": 0})}
    )
    with pytest.raises(CaseInputError, match="in-memory image: no brain"):
        CheckCased("image")(anonymous)


def test_loaders_checks_name_the_files(phantom_dataset) -> None:
    dataset_dir, datalist = phantom_dataset
    entry = json.loads(datalist.read_text())["validation"][0]
    files = [str(dataset_dir / f) for f in entry["image"][:3]]
    with pytest.raises(
        CaseInputError, match=r"_t2.nii.gz: 3 image channels, the network takes 4 \(t1c, t1, t2, flair\)"
    ):
        LoadCased("image")({"image": files})
    with pytest.raises(ValueError, match="ensure_channel_first must stay off"):
        LoadImageCased("image", ensure_channel_first=True)
