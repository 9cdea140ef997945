import pytest
import torch
import torch.nn.functional as F

from custom_modules.losses import WeightedBCEDiceLoss, border_weight_map


def _target(shape, seed=0):
    """One random box per (case, channel), so the map has interior, border and far-background voxels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.zeros(shape)
    spatial = shape[2:]
    for b in range(shape[0]):
        for c in range(shape[1]):
            lo = [int(torch.randint(1, n // 4, (1,), generator=g)) for n in spatial]
            hi = [int(torch.randint(n // 2, n - 1, (1,), generator=g)) for n in spatial]
            y[(b, c, *[slice(a, z) for a, z in zip(lo, hi)])] = 1
    return y


def _reference(logits, y, k=11):
    """Straight transcription of the spec formulas, for 2D."""
    avg = F.avg_pool2d(y, k, stride=1, padding=k // 2, count_include_pad=False)
    w = 1 + 2 * ((avg > 0.005) & (avg < 0.995)).float()
    w = w * w.numel() / w.sum()
    p = torch.sigmoid(logits)
    dice = 1 - (2 * (w**2 * y * p).sum() + 1) / ((w**2 * y**2).sum() + (w**2 * p**2).sum() + 1)
    z = torch.logit(p.clamp(1e-7, 1 - 1e-7))
    bce = ((1 - y) * z + (1 + (w - 1) * y) * torch.log1p(torch.exp(-z))).sum() / w.sum()
    return dice + bce


@pytest.mark.parametrize("shape", [(2, 3, 48, 48), (2, 3, 24, 24, 12)])
def test_perfect_vs_wrong(shape):
    y = _target(shape)
    loss = WeightedBCEDiceLoss()
    perfect = loss(20 * (2 * y - 1), y)
    wrong = loss(-20 * (2 * y - 1), y)
    assert perfect.ndim == 0
    assert perfect.item() < 1e-3
    assert wrong.item() > 10.0


def test_matches_spec_formula():
    y = _target((2, 3, 48, 48), seed=1)
    logits = torch.randn(y.shape, generator=torch.Generator().manual_seed(2)) * 2
    torch.testing.assert_close(WeightedBCEDiceLoss()(logits, y), _reference(logits, y), rtol=1e-4, atol=1e-5)


def test_gradient_flows():
    y = _target((2, 3, 48, 48))
    logits = torch.zeros(y.shape, requires_grad=True)
    WeightedBCEDiceLoss()(logits, y).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # gradient pushes logits up on foreground and down on background
    assert (logits.grad[y == 1] < 0).all() and (logits.grad[y == 0] > 0).all()


def test_weights_come_from_target():
    y = _target((2, 3, 48, 48))
    w = border_weight_map(y)
    assert w.shape == y.shape
    torch.testing.assert_close(w.sum(), torch.tensor(float(y.numel())))
    assert w.unique().numel() == 2  # interior and border levels
    # border pixels are up-weighted 3x relative to the rest
    torch.testing.assert_close(w.max() / w.min(), torch.tensor(3.0))
    # padding is excluded from the average (Keras "same"): uniform targets have no border, even at image edges
    for const in (torch.ones(1, 3, 20, 20), torch.zeros(1, 3, 20, 20), torch.ones(1, 1, 8, 8, 4)):
        assert torch.equal(border_weight_map(const), torch.ones_like(const))

    loss = WeightedBCEDiceLoss(sigmoid=False)
    p = torch.sigmoid(torch.randn(y.shape, generator=torch.Generator().manual_seed(3)))
    # a prediction with no borders (uniform) gives a different weight map from the target's one
    assert not torch.allclose(loss(p, y), loss(y, p))
    # weights depend only on the target: changing prediction borders leaves W unchanged
    assert torch.equal(border_weight_map(y), w)


def test_sigmoid_false_matches_logits_path():
    y = _target((2, 3, 48, 48))
    logits = torch.randn(y.shape, generator=torch.Generator().manual_seed(4)) * 3
    a = WeightedBCEDiceLoss(sigmoid=True)(logits, y)
    b = WeightedBCEDiceLoss(sigmoid=False)(torch.sigmoid(logits), y)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_3d_kernel_and_bad_inputs():
    y = _target((1, 3, 24, 24, 8))
    logits = torch.randn(y.shape)
    for k in (11, (11, 11, 1)):
        assert torch.isfinite(WeightedBCEDiceLoss(kernel_size=k)(logits, y))
    # slice-wise window: the border map of each slice equals the 2D map of that slice
    w3 = border_weight_map(y, (11, 11, 1))
    w2 = border_weight_map(y[..., 3], 11)
    assert torch.equal(w3[..., 3] > w3.min(), w2 > w2.min())
    with pytest.raises(ValueError):
        WeightedBCEDiceLoss()(logits, y[..., :4])
    with pytest.raises(ValueError):
        border_weight_map(y, 10)
