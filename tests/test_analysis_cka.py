"""Debiased linear CKA in minibatch form (Nguyen, Raghu & Kornblith 2021) and the layer-activation plumbing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from raagr2_tools.analysis import (
    MinibatchCKA,
    cka_matrix,
    default_layers,
    gram_linear,
    hsic_unbiased,
    layer_activations,
)


def reference_hsic(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased HSIC_1 (Song et al. 2012) of linear kernels, written straight from the formula."""
    n = x.shape[0]
    k = x.reshape(n, -1) @ x.reshape(n, -1).T
    l_ = y.reshape(n, -1) @ y.reshape(n, -1).T
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l_, 0.0)
    one = np.ones((n, 1))
    value = (
        np.trace(k @ l_)
        + (one.T @ k @ one).item() * (one.T @ l_ @ one).item() / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one.T @ k @ l_ @ one).item()
    )
    return value / (n * (n - 3))


def reference_cka(xs: list[np.ndarray], ys: list[np.ndarray]) -> float:
    """Minibatch CKA: sum of HSIC over batches, then the normalisation (not a mean of per-batch CKAs)."""
    xy = sum(reference_hsic(x, y) for x, y in zip(xs, ys))
    xx = sum(reference_hsic(x, x) for x in xs)
    yy = sum(reference_hsic(y, y) for y in ys)
    return xy / np.sqrt(xx * yy)


def single_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    cka = MinibatchCKA(1, 1)
    cka.update([x], [y])
    return float(cka.compute()[0, 0])


def random_orthogonal(dim: int, generator: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    return q


def test_cka_of_a_representation_with_itself_is_one():
    x = torch.randn(32, 8, 5, 5, generator=torch.Generator().manual_seed(0))
    assert single_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_rotation_scaling_and_translation():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 30, generator=g, dtype=torch.float64)
    y = x @ torch.randn(30, 20, generator=g, dtype=torch.float64) + 0.5 * torch.randn(40, 20, generator=g)
    base = single_cka(x, y)
    assert 0.2 < base < 0.99  # related but not identical: invariance below is not trivially 1 == 1
    assert single_cka(x @ random_orthogonal(30, g), y) == pytest.approx(base, rel=1e-9)
    assert single_cka(x, y @ random_orthogonal(20, g)) == pytest.approx(base, rel=1e-9)
    assert single_cka(7.5 * x, 0.01 * y) == pytest.approx(base, rel=1e-9)
    assert single_cka(x + 3.0, y - 1.0) == pytest.approx(base, rel=1e-9)


def test_cka_is_not_invariant_to_anisotropic_scaling():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 10, generator=g, dtype=torch.float64)
    y = x + 0.3 * torch.randn(40, 10, generator=g, dtype=torch.float64)
    scale = torch.tensor([100.0] + [1.0] * 9, dtype=torch.float64)
    assert abs(single_cka(x * scale, y) - single_cka(x, y)) > 0.05


def test_independent_representations_have_cka_near_zero():
    g = torch.Generator().manual_seed(3)
    cka = MinibatchCKA(1, 1)
    xs, ys = [], []
    for _ in range(5):
        x, y = torch.randn(64, 200, generator=g), torch.randn(64, 200, generator=g)
        cka.update([x], [y])
        xs.append(x.double().numpy())
        ys.append(y.double().numpy())
    value = float(cka.compute()[0, 0])
    assert abs(value) < 0.1
    # the biased estimator (centred Gram matrices) would be far from 0 here: the test tells the two apart
    h = np.eye(64) - 1.0 / 64
    biased = [
        (np.trace(h @ x @ x.T @ h @ y @ y.T), np.trace(h @ x @ x.T @ h @ x @ x.T), np.trace(h @ y @ y.T @ h @ y @ y.T))
        for x, y in zip(xs, ys)
    ]
    xy, xx, yy = (sum(b[i] for b in biased) for i in range(3))
    assert xy / np.sqrt(xx * yy) > 0.5


def test_minibatch_cka_matches_numpy_reference_on_one_batch():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(12, 3, 4, 4, generator=g)
    y = torch.randn(12, 6, generator=g) + x.reshape(12, -1)[:, :6]
    assert single_cka(x, y) == pytest.approx(reference_cka([x.double().numpy()], [y.double().numpy()]), rel=1e-10)
    assert float(hsic_unbiased(gram_linear(x), gram_linear(y))) == pytest.approx(
        reference_hsic(x.double().numpy(), y.double().numpy()), rel=1e-10
    )


def test_minibatch_cka_accumulates_hsic_over_batches_into_a_matrix():
    g = torch.Generator().manual_seed(5)
    batches = []
    for n in (6, 9):  # unequal batch sizes are allowed
        x1 = torch.randn(n, 10, generator=g)
        x2 = x1 * 2 + torch.randn(n, 10, generator=g)
        y1 = torch.randn(n, 4, generator=g) + x1[:, :4]
        batches.append(([x1, x2], [y1, x1]))
    cka = MinibatchCKA(2, 2)
    for rows, cols in batches:
        cka.update(rows, cols)
    result = cka.compute()
    assert result.shape == (2, 2) and result.dtype == torch.float64 and cka.n_batches == 2
    for i in range(2):
        for j in range(2):
            xs = [rows[i].double().numpy() for rows, _ in batches]
            ys = [cols[j].double().numpy() for _, cols in batches]
            assert float(result[i, j]) == pytest.approx(reference_cka(xs, ys), rel=1e-10)
    assert float(result[0, 1]) == pytest.approx(1.0)  # row layer 0 is column layer 1
    per_batch_mean = np.mean([reference_cka([r[0].double().numpy()], [c[0].double().numpy()]) for r, c in batches])
    assert float(result[0, 0]) != pytest.approx(per_batch_mean, rel=1e-6)  # a ratio of sums, not a mean of ratios


@pytest.mark.parametrize("n", [1, 2, 3])
def test_batches_smaller_than_four_raise(n):
    x = torch.randn(n, 5)
    with pytest.raises(ValueError, match=f"batch size {n}"):
        MinibatchCKA(1, 1).update([x], [x])
    with pytest.raises(ValueError, match=f"batch size {n}"):
        hsic_unbiased(gram_linear(x), gram_linear(x))


def test_update_checks_layer_counts_and_batch_sizes():
    cka = MinibatchCKA(2, 1)
    x = torch.randn(8, 3)
    with pytest.raises(ValueError, match="expected 2 row and 1 column"):
        cka.update([x], [x])
    with pytest.raises(ValueError, match="same batch size"):
        cka.update([x, torch.randn(6, 3)], [x])
    with pytest.raises(RuntimeError, match="before any update"):
        cka.compute()


def test_constant_layer_gives_nan_not_an_error():
    x = torch.randn(8, 3)
    assert np.isnan(single_cka(x, torch.ones(8, 3)))


class TupleBlock(nn.Module):
    """Returns (features, auxiliary): the hook must take the first tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.conv(x), x.mean()


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2, padding=1))
        self.block = TupleBlock()
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.block(self.stem(x))[0])


def tiny_sequential() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2, padding=1))


def test_layer_activations_shapes_order_and_no_hooks_left():
    model = tiny_sequential()
    inputs = torch.randn(5, 3, 16, 16)
    outputs = layer_activations(model, ["2", "0", "1"], inputs)
    assert [tuple(o.shape) for o in outputs] == [(5, 4, 8, 8), (5, 8, 16, 16), (5, 8, 16, 16)]
    assert torch.allclose(outputs[0], model(inputs))
    assert torch.allclose(outputs[2], torch.relu(outputs[1]))
    assert all(not o.requires_grad for o in outputs)
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_layer_activations_eval_mode_tuple_outputs_and_restored_training():
    model = TinyNet().train()
    inputs = torch.randn(4, 3, 8, 8)
    (block, final) = layer_activations(model, ["block", ""], inputs)
    assert block.shape == (4, 2, 4, 4)
    assert torch.equal(final, block)  # dropout off: eval mode during the pass
    assert all(m.training for m in model.modules())  # and training mode restored afterwards
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_layer_activations_bad_name_raises_naming_it_and_removes_hooks():
    model = tiny_sequential()
    with pytest.raises(ValueError, match="stem.conv9"):
        layer_activations(model, ["0", "stem.conv9"], torch.randn(4, 3, 8, 8))

    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    failing = nn.Sequential(nn.Conv2d(3, 3, 1), Boom())
    with pytest.raises(RuntimeError, match="boom"):
        layer_activations(failing, ["0"], torch.randn(4, 3, 8, 8))
    assert all(len(m._forward_hooks) == 0 for m in failing.modules())


def test_layer_run_twice_raises():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(3, 3, 1), relu, nn.Conv2d(3, 3, 1), relu)
    with pytest.raises(ValueError, match="'1' ran 2 times"):
        layer_activations(model, ["1"], torch.randn(4, 3, 8, 8))


def test_default_layers_order_and_even_subsampling():
    model = TinyNet()
    assert default_layers(model) == ["stem.0", "stem.2", "block.conv"]
    assert default_layers(model, kinds=(nn.ReLU, nn.Dropout)) == ["stem.1", "dropout"]
    deep = nn.Sequential(*[nn.Conv2d(2, 2, 1) for _ in range(10)])
    assert default_layers(deep, max_layers=4) == ["0", "3", "6", "9"]
    assert default_layers(deep, max_layers=2) == ["0", "9"]
    assert default_layers(deep, max_layers=10) == default_layers(deep, max_layers=50) == [str(i) for i in range(10)]
    for k in range(2, 10):
        picked = default_layers(deep, max_layers=k)
        assert len(set(picked)) == k and picked[0] == "0" and picked[-1] == "9"
        assert [int(p) for p in picked] == sorted(int(p) for p in picked)
    with pytest.raises(ValueError, match="max_layers"):
        default_layers(deep, max_layers=1)


def test_cka_matrix_of_a_model_with_itself_and_with_another():
    teacher = tiny_sequential()
    torch.manual_seed(1)
    student = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1))
    layers = default_layers(teacher)
    batches = [torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    same = cka_matrix(teacher, teacher, layers, layers, batches)
    assert same.shape == (2, 2)
    assert torch.allclose(torch.diagonal(same), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(same, same.T)
    cross = cka_matrix(teacher, student, layers, ["0", "1", "2"], iter(batches))
    assert cross.shape == (2, 3) and torch.isfinite(cross).all()
    expected = MinibatchCKA(2, 3)
    for batch in batches:
        expected.update(layer_activations(teacher, layers, batch), layer_activations(student, ["0", "1", "2"], batch))
    assert torch.allclose(cross, expected.compute())
    with pytest.raises(ValueError, match="batch size 3"):
        cka_matrix(teacher, student, layers, layers, [torch.randn(3, 3, 8, 8)])


def test_gram_is_float64_and_chunking_over_features_does_not_change_it(monkeypatch):
    from raagr2_tools.analysis import cka as cka_module

    x = torch.randn(7, 3, 5, 5, generator=torch.Generator().manual_seed(6))
    whole = gram_linear(x)
    monkeypatch.setattr(cka_module, "_GRAM_CHUNK", 4)  # 75 features in 19 chunks
    chunked = gram_linear(x)
    flat = x.reshape(7, -1).double()
    assert whole.dtype == chunked.dtype == torch.float64
    assert torch.allclose(whole, flat @ flat.T) and torch.allclose(chunked, flat @ flat.T)
