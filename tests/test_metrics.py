import pytest
import torch

from custom_modules.constants import REGION_CHANNELS
from custom_modules.metrics import (
    BRATS_EMPTY_PENALTY,
    HD95_DEFINITIONS,
    BraTSHausdorff95Metric,
    ReferenceMeanIoUMetric,
    ReferenceSoftDiceMetric,
    region_dice_metric,
)


def _cube(shape=(24, 24, 24), start=6, size=8, shift=0):
    m = torch.zeros(shape)
    s = slice(start, start + size)
    m[s.start + shift : s.stop + shift, s, s] = 1
    return m


def test_penalty_constant():
    assert REGION_CHANNELS == ("tc", "wt", "et")
    assert BRATS_EMPTY_PENALTY == 374.0  # the BraTS 2023 metrics code replaces inf by 374


@pytest.mark.parametrize("definition", sorted(HD95_DEFINITIONS))
def test_hd95_identical_is_zero(definition):
    y = torch.stack([_cube(), _cube(size=4), _cube(start=2, size=10)])[None]  # (1, 3, D, H, W)
    m = BraTSHausdorff95Metric(definition, spacing=1.0)
    out = m(y, y)
    assert out.shape == (1, 3)
    assert torch.equal(out, torch.zeros(1, 3))


@pytest.mark.parametrize("definition", sorted(HD95_DEFINITIONS))
@pytest.mark.parametrize("k", [1, 3])
def test_hd95_shift(k, definition):
    y = _cube()[None, None]
    p = _cube(shift=k)[None, None]
    out = BraTSHausdorff95Metric(definition, spacing=1.0)(p, y)
    assert out.item() == pytest.approx(k, abs=1e-4)


@pytest.mark.parametrize("definition", sorted(HD95_DEFINITIONS))
def test_hd95_spacing_scales(definition):
    y, p = _cube()[None, None], _cube(shift=2)[None, None]
    assert BraTSHausdorff95Metric(definition, spacing=2.0)(p, y).item() == pytest.approx(4.0, abs=1e-4)
    # anisotropic: the shift is along the first spatial axis only
    assert BraTSHausdorff95Metric(definition, spacing=(3.0, 1.0, 1.0))(p, y).item() == pytest.approx(6.0, abs=1e-4)
    # call-time keyword overrides the constructor
    assert BraTSHausdorff95Metric(definition, spacing=2.0)(p, y, spacing=0.5).item() == pytest.approx(1.0, abs=1e-4)


def test_hd95_missing_spacing_raises():
    """No spacing and a plain tensor label: an error, not a silent 1 mm."""
    y, p = _cube()[None, None], _cube(shift=2)[None, None]
    for definition in HD95_DEFINITIONS:
        with pytest.raises(ValueError, match="HD95 needs the voxel spacing"):
            BraTSHausdorff95Metric(definition)(p, y)
    with pytest.raises(ValueError, match="hd95_definition must be one of"):
        BraTSHausdorff95Metric("brats2021")


def test_hd95_definitions_differ_where_surfel_areas_matter():
    """The BraTS 2023 definition weights surface distances by surfel area; MONAI's counts boundary voxels.

    A ball against the ball plus a thin spike: the spike adds few surfel area but a noticeable share of
    boundary voxels, so the two 95th percentiles differ; each matches its own direct computation."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(32.0)] * 3, indexing="ij"))
    ball = ((grid - 12).pow(2).sum(0) <= 36).float()
    spiked = ball.clone()
    spiked[12, 12, 18:30] = 1
    monai_hd = BraTSHausdorff95Metric("monai", spacing=1.0)(spiked[None, None], ball[None, None]).item()
    brats_hd = BraTSHausdorff95Metric("brats2023", spacing=1.0)(spiked[None, None], ball[None, None]).item()
    assert monai_hd != pytest.approx(brats_hd, abs=0.05)
    assert 0 <= brats_hd < 12 and 0 <= monai_hd < 12


def test_hd95_spacing_from_ground_truth_affine():
    """Without an explicit spacing, the voxel size comes from the label's affine (as loaded from NIfTI)."""
    from monai.data import MetaTensor

    y, p = _cube()[None], _cube(shift=2)[None]
    affine = torch.diag(torch.tensor([3.0, 1.0, 1.0, 1.0]))
    labelled = [MetaTensor(y, affine=affine)]
    assert BraTSHausdorff95Metric()([p], labelled).item() == pytest.approx(6.0, abs=1e-4)
    assert BraTSHausdorff95Metric(spacing=1.0)([p], labelled).item() == pytest.approx(2.0, abs=1e-4)


def test_hd95_empty_conventions_and_aggregate():
    cube, empty = _cube(), torch.zeros(24, 24, 24)
    # channels: both empty, empty prediction, empty ground truth
    y = torch.stack([empty, cube, empty])[None]
    p = torch.stack([empty, empty, cube])[None]
    m = BraTSHausdorff95Metric(spacing=1.0, empty_penalty=100.0)
    out = m(p, y)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.tensor([[0.0, 100.0, 100.0]]))
    assert BraTSHausdorff95Metric(spacing=1.0)(p, y)[0, 1].item() == pytest.approx(BRATS_EMPTY_PENALTY)
    # second batch as a list of channel-first tensors, shifted cube in all channels
    m([_cube(shift=2).expand(3, -1, -1, -1)], [cube.expand(3, -1, -1, -1)])
    torch.testing.assert_close(m.aggregate(), torch.tensor([(0 + 100 + 100 + 3 * 2.0) / 6]))  # MONAI keeps a (1,) shape
    torch.testing.assert_close(m.aggregate("mean_batch"), torch.tensor([1.0, 51.0, 51.0]))
    m.reset()
    assert m.get_buffer() is None


def test_hd95_2d_and_probabilities_binarised():
    y = torch.zeros(2, 3, 32, 32)
    y[:, :, 8:16, 8:16] = 1
    p = y.roll(2, dims=-1) * 0.9 + 0.05  # soft values, threshold 0.5 recovers the shifted mask
    out = BraTSHausdorff95Metric(spacing=1.0)(p, y)
    torch.testing.assert_close(out, torch.full((2, 3), 2.0))


def test_reference_soft_dice():
    y = torch.zeros(2, 3, 16, 16)
    y[0, :, 4:8, 4:8] = 1
    y[1, 1, :, :] = 1
    m = ReferenceSoftDiceMetric()
    out = m(y, y)
    assert out.shape == (2, 1)
    assert torch.all(out > 0.99) and torch.all(out <= 1.0)
    # exact formula, no threshold: p = 0.5 everywhere on case 0
    p = torch.full_like(y, 0.5)
    d = ReferenceSoftDiceMetric()(p, y)[0, 0]
    s_y, s_p = y[0].sum(), p[0].sum()
    torch.testing.assert_close(d, (2 * 0.5 * s_y + 1) / (s_y + s_p + 1))
    # single channel, like the reference's class Dice
    d1 = ReferenceSoftDiceMetric(channel=1)(p, y)[1, 0]
    torch.testing.assert_close(d1, torch.tensor((2 * 0.5 * 256 + 1) / (256 + 128 + 1)))
    torch.testing.assert_close(m.aggregate(), out.mean().reshape(1))


def test_reference_mean_iou():
    y = torch.zeros(2, 3, 16, 16)
    y[:, :, :8] = 1
    m = ReferenceMeanIoUMetric()
    torch.testing.assert_close(m(y * 0.8 + 0.1, y), torch.ones(2, 1))  # binarised at 0.5
    torch.testing.assert_close(m(1 - y, y), torch.zeros(2, 1), atol=1e-9, rtol=0)  # disjoint
    half = y.clone()
    half[:, :, 4:8] = 0  # predicted half of the ground truth
    torch.testing.assert_close(ReferenceMeanIoUMetric()(half, y), torch.full((2, 1), 0.5))
    torch.testing.assert_close(m.aggregate(), torch.tensor([1.0 / 2]))  # mean of 1 and 0
    # reference eps placement: (I + eps) / (U + eps), so an empty case scores 1
    torch.testing.assert_close(
        ReferenceMeanIoUMetric()(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)), torch.ones(1, 1)
    )


def test_region_dice_empty_conventions():
    y = torch.zeros(1, 3, 8, 8)
    p = torch.zeros(1, 3, 8, 8)
    y[0, 1, 2:6, 2:6] = 1  # wt: non-empty gt, perfect pred
    p[0, 1, 2:6, 2:6] = 1
    p[0, 2, 0:2, 0:2] = 1  # et: empty gt, non-empty pred
    m = region_dice_metric()
    m(p, y)  # tc: both empty
    torch.testing.assert_close(m.aggregate(), torch.tensor([1.0, 1.0, 0.0]))
