"""The bundle's z-score and threshold are the ONNX runner's own functions, so both compute the same bits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import NormalizeIntensity

from custom_modules.onnx_runner import logit_threshold, regions_from_logits, zscore_nonzero
from custom_modules.transforms import RegionsFromLogitsd, ZScoreNonzerod


def test_zscore_is_the_runners_bit_for_bit_and_monais_to_rounding() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 2000, size=(4, 24, 20, 6)).astype(np.float32)
    image[:, :5] = 0
    image[2] = 0  # an empty channel stays as it is
    meta = MetaTensor(torch.from_numpy(image.copy()), affine=torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0])))
    out = ZScoreNonzerod("image")({"image": meta})["image"]
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32
    assert torch.equal(out.affine, meta.affine)
    runner = zscore_nonzero(image)
    assert np.array_equal(out.numpy(), runner)  # same bits
    assert np.all(runner[:, :5] == 0) and np.all(runner[2] == 0)
    monai = NormalizeIntensity(nonzero=True, channel_wise=True)(torch.from_numpy(image.copy())).numpy()
    np.testing.assert_allclose(runner, monai, atol=1e-5)  # the same normalisation, up to float32 rounding


def test_threshold_is_decided_on_the_logits() -> None:
    assert logit_threshold(0.5) == 0.0 and logit_threshold(0.9) == pytest.approx(np.log(9))
    logits = np.array([[-1.49e-7, 0.0, 1e-8, -1e-3, 2.0, -30.0]], dtype=np.float32)
    expected = [[False, True, True, False, True, False]]
    assert regions_from_logits(logits, 0.5).tolist() == expected
    regions = RegionsFromLogitsd("pred", threshold=0.5)({"pred": torch.from_numpy(logits)})["pred"]
    assert regions.dtype == torch.float32 and regions.bool().tolist() == expected
    # float32 sigmoid rounds -1.49e-7 to exactly 0.5: the probability rule would mark that voxel, the logit rule not
    assert bool(torch.sigmoid(torch.tensor(-1.49e-7)) >= 0.5)
    with pytest.raises(ValueError, match="threshold 1.0 is not a probability"):
        RegionsFromLogitsd("pred", threshold=1.0)
