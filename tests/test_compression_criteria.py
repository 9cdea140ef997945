"""Pruning criteria (raagr2_tools.compression.criteria) on tiny real RAAGR2-Nets: no mocks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from ignite.engine import Engine
from monai.engines import SupervisedTrainer
from torch import nn

from custom_modules.losses import WeightedBCEDiceLoss
from custom_modules.networks import RAAGR2Net
from custom_modules.networks.pruned.structure import (
    fix_untracked_concat_inputs,
    input_bound_layers,
    shared_kernel_parameters,
    split_grouped_convs,
)
from raagr2_tools.compression import attach_training_hooks
from raagr2_tools.compression.criteria import (
    METHODS,
    LayerScoreImportance,
    SlimmingRegularizer,
    conv_relevance_maps,
    get_criterion,
    gradient_x_input_relevance,
    make_importance,
    pruner_class,
    taylor_scores,
)

TINY = (4, 8, 16, 32, 64)
STRUCTURED = tuple(m for m in METHODS if m != "snip")


def tiny_net(sharing: str = "none", seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    net = RAAGR2Net(features=TINY, out_channels=3, sigmoid=False, sharing=sharing, **kwargs)
    split_grouped_convs(net)
    with torch.no_grad():  # trained-like BN scales: no ties for slimming
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.1, 1.5)
    return net.eval()


def random_batches(n: int = 2, batch: int = 2, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randn(batch, 4, 32, 32, generator=g),
            "label": (torch.rand(batch, 3, 32, 32, generator=g) > 0.7).float(),
        }
        for _ in range(n)
    ]


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.fixture(scope="module")
def nets() -> dict[str, nn.Module]:
    return {sharing: tiny_net(sharing) for sharing in ("none", "depthwise")}


# ---------------------------------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", METHODS)
def test_get_criterion(name: str) -> None:
    c = get_criterion(name)
    assert c.name == name and c.reference
    assert c.structured == (name != "snip")
    assert c.from_init == (name in ("snip", "snip_structured"))
    assert c.needs_batches == (name in ("taylor", "gradient_x_input", "snip_structured"))
    assert c.sparse_training == (name == "slimming")
    assert c.default_allocation == ("global" if name in ("slimming", "snip", "snip_structured") else "uniform")
    assert pruner_class(c) is (tp.pruner.BNScalePruner if name == "slimming" else tp.pruner.BasePruner)


def test_unknown_criterion_lists_methods() -> None:
    with pytest.raises(ValueError) as err:
        get_criterion("l1")
    assert all(m in str(err.value) for m in METHODS)


def test_make_importance_refusals(nets: dict[str, nn.Module]) -> None:
    with pytest.raises(ValueError, match="snip is unstructured: use raagr2_tools.compression.snip"):
        make_importance(get_criterion("snip"), nets["none"])
    with pytest.raises(ValueError, match="batches"):
        make_importance(get_criterion("taylor"), nets["none"])


def test_importance_types(nets: dict[str, nn.Module]) -> None:
    net = copy.deepcopy(nets["none"])
    l1 = make_importance(get_criterion("magnitude_l1"), net)
    assert isinstance(l1, tp.importance.GroupMagnitudeImportance) and (l1.p, l1.group_reduction, l1.normalizer) == (
        1,
        "first",
        None,
    )
    dg = make_importance(get_criterion("depgraph"), net)
    assert (dg.p, dg.group_reduction, dg.normalizer) == (2, "mean", "mean")
    assert isinstance(make_importance(get_criterion("slimming"), net), tp.importance.BNScaleImportance)
    taylor = make_importance(get_criterion("taylor"), net, random_batches(1), WeightedBCEDiceLoss(sigmoid=True))
    assert isinstance(taylor, LayerScoreImportance) and net.head in taylor.scores
    assert net.head.weight.grad is None  # scores are computed; no gradients left behind


def test_renamed_criterion_says_why() -> None:
    with pytest.raises(ValueError, match="'lrp' was renamed gradient_x_input .*not an LRP rule"):
        get_criterion("lrp")


# ---------------------------------------------------------------------------------------------------- Taylor


def test_taylor_squares_per_minibatch_then_averages() -> None:
    """Molchanov et al. 2019: (sum_s g_s w_s)^2 per filter and minibatch, averaged over minibatches.

    Two minibatches whose first-order terms have opposite signs: averaging the gradients first (the former
    implementation) cancels them to ~0, the paper's score does not."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
    net = nn.Sequential(conv).eval()
    loss_fn = lambda out, target: (out * target).sum()  # noqa: E731  dL/dw_k = sum(x * target_k)
    x = torch.ones(1, 1, 2, 2)
    batches = [{"image": x, "label": torch.ones(1, 2, 2, 2)}, {"image": x, "label": -torch.ones(1, 2, 2, 2)}]
    scores = taylor_scores(net, batches, loss_fn)[conv]
    # per batch: g_k = +-4 (4 pixels), first order g_k * w_k = +-4 w_k; squared: 16 w_k^2; mean over both
    torch.testing.assert_close(scores, torch.tensor([16.0, 64.0]))
    mean_gradient = sum(torch.ones(2) * 4 * sign for sign in (1, -1)) / 2
    assert torch.all(mean_gradient == 0), "the old averaged-gradient score would be exactly 0 here"


def test_taylor_matches_explicit_per_batch_computation(nets: dict[str, nn.Module]) -> None:
    net = copy.deepcopy(nets["none"])
    batches, loss_fn = random_batches(3), WeightedBCEDiceLoss(sigmoid=True)
    scores = taylor_scores(net, batches, loss_fn)
    conv = net.head
    expected = torch.zeros(conv.out_channels)
    for batch in batches:
        net.zero_grad()
        loss_fn(net(batch["image"]), batch["label"]).backward()
        first = (conv.weight.grad * conv.weight).flatten(1).sum(1) + conv.bias.grad * conv.bias
        expected += first.detach().pow(2) / len(batches)
    torch.testing.assert_close(scores[conv], expected)


# ---------------------------------------------------------------------------------------------------- pruning


@pytest.mark.parametrize("sharing", ["none", "depthwise"])
@pytest.mark.parametrize("name", STRUCTURED)
def test_structured_criterion_prunes(name: str, sharing: str, nets: dict[str, nn.Module]) -> None:
    net = copy.deepcopy(nets[sharing])
    criterion = get_criterion(name)
    example = torch.randn(1, 4, 32, 32)
    importance = make_importance(criterion, net, random_batches(1, 1), WeightedBCEDiceLoss(sigmoid=True))
    before = count_params(net)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    pruner = pruner_class(criterion)(
        net,
        example,
        importance=importance,
        pruning_ratio=0.5,
        ignored_layers=[net.head] + input_bound_layers(net, example),
        unwrapped_parameters=shared_kernel_parameters(net) or None,
        global_pruning=criterion.default_allocation == "global",
        max_pruning_ratio=0.8,
    )
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())  # scoring left weights and BN stats
    fix_untracked_concat_inputs(pruner.DG)
    pruner.step()
    assert count_params(net) < 0.8 * before
    assert net.head.out_channels == 3
    with torch.no_grad():
        assert net(example).shape == (1, 3, 32, 32)


# ---------------------------------------------------------------------------------------------------- gradient x input


def lrp0_conv(x: torch.Tensor, conv: nn.Conv2d, relevance: torch.Tensor) -> torch.Tensor:
    """Explicit LRP-0 through a bias-free conv (Yeom et al.'s conv rule): R_in = x * W^T (R / z)."""
    z = conv(x)
    s = relevance / (z + 1e-12 * torch.where(z >= 0, 1.0, -1.0))
    c = F.conv_transpose2d(s, conv.weight, stride=conv.stride, padding=conv.padding, dilation=conv.dilation)
    return x * c


def test_gradient_x_input_is_lrp0_on_bias_free_relu_nets() -> None:
    torch.manual_seed(0)
    c1, c2, c3 = (
        nn.Conv2d(2, 5, 3, padding=1, bias=False),
        nn.Conv2d(5, 6, 3, padding=2, dilation=2, bias=False),
        nn.Conv2d(6, 3, 1, bias=False),
    )
    net = nn.Sequential(c1, nn.ReLU(), c2, nn.ReLU(), c3).double().eval()
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    label = (torch.rand(2, 3, 8, 8) > 0.5).double()
    maps = conv_relevance_maps(net, x, label)
    with torch.no_grad():
        logits = net(x)
    total = float((logits * label).sum())
    for conv in (c1, c2, c3):  # conservation at every layer of a bias-free ReLU net
        assert float(maps[conv][0].sum()) == pytest.approx(total, rel=1e-9)
    # explicit layer-by-layer LRP-0 from R_out = logits * label
    with torch.no_grad():
        a1 = torch.relu(c1(x))
        a2 = torch.relu(c2(a1))
        r_a2 = lrp0_conv(a2, c3, logits * label)
        r_a1 = lrp0_conv(a1, c2, r_a2)
        r_x = lrp0_conv(x, c1, r_a1)
    assert torch.allclose(maps[c2][0], r_a2, atol=1e-9)  # ReLU passes relevance unchanged
    assert torch.allclose(maps[c1][0], r_a1, atol=1e-9)
    assert float(r_x.sum()) == pytest.approx(total, rel=1e-9)


def test_gradient_x_input_ranks_zeroed_filter_lowest(nets: dict[str, nn.Module]) -> None:
    net = copy.deepcopy(nets["none"])
    conv = net.up4.up[1]  # its group's only conv output: the group score is its own relevance
    batches = random_batches(1)
    before = gradient_x_input_relevance(net, batches)[conv]
    k = int(before.argmax())
    with torch.no_grad():
        conv.weight[k].zero_()
        conv.bias[k].zero_()
    relevance = gradient_x_input_relevance(net, batches)
    assert relevance[conv].shape == (conv.out_channels,) and float(before[k]) > 0
    graph = tp.DependencyGraph().build_dependency(net, torch.randn(1, 4, 32, 32))
    group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(conv.out_channels)))
    scores = LayerScoreImportance(relevance)(group)
    assert scores.shape == (conv.out_channels,)
    assert float(scores[k]) == 0.0 == float(scores.min())  # dead (never active) filters may tie at 0
    assert torch.equal(scores, relevance[conv])


@pytest.mark.parametrize("name", ["gradient_x_input", "taylor"])
def test_layer_scores_refreshed_between_iterative_steps(nets: dict[str, nn.Module], name: str) -> None:
    net = copy.deepcopy(nets["depthwise"])
    example = torch.randn(1, 4, 32, 32)
    importance = make_importance(get_criterion(name), net, random_batches(1))
    pruner = tp.pruner.BasePruner(
        net,
        example,
        importance=importance,
        pruning_ratio=0.5,
        iterative_steps=2,
        ignored_layers=[net.head] + input_bound_layers(net, example),
        unwrapped_parameters=shared_kernel_parameters(net),
        global_pruning=True,
        max_pruning_ratio=0.8,
    )
    fix_untracked_concat_inputs(pruner.DG)
    pruner.step()
    size1, widths1 = count_params(net), {m: m.out_channels for m in importance.scores}
    assert any(importance.scores[m].shape[0] != w for m, w in widths1.items())  # stale after step 1
    pruner.step()
    assert count_params(net) < size1
    assert all(importance.scores[m].shape[0] == w for m, w in widths1.items())  # rescored before step 2
    with torch.no_grad():
        assert net(example).shape == (1, 3, 32, 32)


# ---------------------------------------------------------------------------------------------------- slimming


def train_gammas(regularize: bool, iterations: int, lr: float, reg: float) -> torch.Tensor:
    net = tiny_net(dropout=0.0).train()
    example = torch.randn(1, 4, 32, 32)
    data = random_batches(iterations)
    regularizer = None
    if regularize:
        factory = lambda: tp.pruner.BNScalePruner(  # noqa: E731
            net, example, importance=tp.importance.BNScaleImportance(normalizer=None), ignored_layers=[net.head]
        )
        regularizer = SlimmingRegularizer(factory, net, reg=reg)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=lr),
        loss_function=WeightedBCEDiceLoss(sigmoid=True),
        decollate=False,
    )
    handles = attach_training_hooks(trainer, regularizer.hooks()) if regularizer else []
    trainer.run()
    for handle in handles:
        handle.remove()
    if regularize:
        assert isinstance(regularizer.pruner, tp.pruner.BNScalePruner)
    return torch.cat([m.weight.detach().flatten() for m in net.modules() if isinstance(m, nn.BatchNorm2d)])


def test_slimming_regularizer_pushes_gammas_to_zero() -> None:
    lr, reg = 0.1, 1e-2
    gamma0 = torch.cat(
        [m.weight.detach().flatten() for m in tiny_net(dropout=0.0).modules() if isinstance(m, nn.BatchNorm2d)]
    )
    plain1, slim1 = train_gammas(False, 1, lr, reg), train_gammas(True, 1, lr, reg)
    assert torch.allclose(slim1, plain1 - lr * reg * torch.sign(gamma0), atol=1e-6)  # exactly one L1 subgradient step
    plain2, slim2 = train_gammas(False, 2, lr, reg), train_gammas(True, 2, lr, reg)
    shrink = float(plain2.abs().sum() - slim2.abs().sum())
    assert shrink > 1.5 * lr * reg * gamma0.numel()  # about two steps of lr * reg per gamma


def test_slimming_regularizer_needs_iteration_events() -> None:
    net = tiny_net()
    regularizer = SlimmingRegularizer(lambda: None, net)
    with pytest.raises(ValueError, match="IterationEvents"):
        attach_training_hooks(Engine(lambda engine, batch: None), regularizer.hooks())
    with pytest.raises(RuntimeError):
        regularizer.regularize()
