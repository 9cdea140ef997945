"""Unstructured SNIP (raagr2_tools.compression.snip) on tiny real RAAGR2-Nets and a real SupervisedTrainer."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.engines import SupervisedTrainer
from torch import nn

from custom_modules.losses import WeightedBCEDiceLoss
from custom_modules.networks import RAAGR2Net
from custom_modules.networks.pruned.structure import split_grouped_convs
from raagr2_tools.compression import TrainingHooks, attach_training_hooks
from raagr2_tools.compression.snip import (
    MaskEnforcer,
    apply_masks,
    count_masked_zeros,
    iterative_snip_masks,
    scored_weights,
    snip_masks,
    snip_saliency,
)

LOSS = WeightedBCEDiceLoss(sigmoid=True)


def tiny_net(sharing: str = "none", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = RAAGR2Net(features=(4, 8, 16, 32, 64), out_channels=3, sigmoid=False, sharing=sharing)
    split_grouped_convs(net)
    return net


def random_batch(batch: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(batch, 4, 32, 32, generator=g),
        "label": (torch.rand(batch, 3, 32, 32, generator=g) > 0.7).float(),
    }


def snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def n_masked(masks: dict[str, torch.Tensor]) -> int:
    return sum(int((~m).sum()) for m in masks.values())


@pytest.mark.parametrize("sharing", ["none", "depthwise"])
def test_saliency_scores_conv_weights_only(sharing: str) -> None:
    net = tiny_net(sharing)
    state = snapshot(net)
    saliency = snip_saliency(net, random_batch(), LOSS, exclude=[net.head])
    convs = {f"{n}.weight" for n, m in net.named_modules() if isinstance(m, nn.Conv2d) and m is not net.head}
    assert set(saliency) == convs and "head.weight" not in saliency
    params = dict(net.named_parameters())
    assert all(s.shape == params[n].shape and bool((s >= 0).all()) for n, s in saliency.items())
    assert sum(float(s.sum()) for s in saliency.values()) > 0
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())  # weights and BN buffers untouched
    assert all(p.grad is None for p in net.parameters())
    if sharing == "depthwise":  # the functional shared kernel is not an nn.Conv2d
        assert not any("kernels" in n for n in saliency)


def test_saliency_is_weight_times_gradient_with_batch_statistics() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(6, 3, 1)
    )
    net.eval()
    batch = random_batch()
    saliency = snip_saliency(net, batch, LOSS)
    assert set(saliency) == {"0.weight", "4.weight"} and not net.training  # mode restored
    reference = copy.deepcopy(net).train()  # at init: batch BN statistics; dropout off
    reference[3].eval()
    LOSS(reference(batch["image"]), batch["label"]).backward()
    for name, p in reference.named_parameters():
        if name in saliency:
            assert torch.allclose(saliency[name], (p * p.grad).abs(), atol=1e-7)


@pytest.mark.parametrize("sparsity", [0.0, 0.37, 0.5, 0.9])
def test_global_masks_keep_exact_top_fraction(sparsity: float) -> None:
    net = tiny_net()
    saliency = snip_saliency(net, random_batch(), LOSS, exclude=[net.head])
    masks = snip_masks(saliency, sparsity)
    n = sum(s.numel() for s in saliency.values())
    assert set(masks) == set(saliency) and all(m.dtype == torch.bool for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == round((1 - sparsity) * n)
    if 0 < sparsity:
        total = sum(float(s.sum()) for s in saliency.values())
        kept_min = min(float(saliency[k][m].min()) for k, m in masks.items() if m.any()) / total
        pruned_max = max(float(saliency[k][~m].max()) for k, m in masks.items() if (~m).any()) / total
        assert kept_min >= pruned_max  # ranked across layers


def test_uniform_masks_per_layer() -> None:
    net = tiny_net()
    saliency = snip_saliency(net, random_batch(), LOSS, exclude=[net.head])
    masks = snip_masks(saliency, 0.8, allocation="uniform")
    for name, mask in masks.items():
        assert int(mask.sum()) == max(1, round(0.2 * mask.numel()))


def test_mask_argument_errors() -> None:
    saliency = {"w": torch.rand(4, 4)}
    with pytest.raises(ValueError):
        snip_masks(saliency, 1.0)
    with pytest.raises(ValueError):
        snip_masks(saliency, 0.5, allocation="layerwise")
    net = tiny_net()
    with pytest.raises(KeyError):
        apply_masks(net, {"nope.weight": torch.ones(1, dtype=torch.bool)})
    with pytest.raises(ValueError):
        apply_masks(net, {"head.weight": torch.ones(1, dtype=torch.bool)})
    with pytest.raises(ValueError):
        iterative_snip_masks(net, random_batch(), LOSS, 0.5, steps=0)


@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_iterative_snip_hits_target_and_leaves_net(allocation: str) -> None:
    net = tiny_net()
    state = snapshot(net)
    masks = iterative_snip_masks(
        net, random_batch(), LOSS, sparsity=0.9, steps=3, exclude=[net.head], allocation=allocation
    )
    weights = scored_weights(net, exclude=[net.head])
    assert set(masks) == set(weights)
    n = sum(w.numel() for w in weights.values())
    kept = sum(int(m.sum()) for m in masks.values())
    if allocation == "global":
        assert kept == round(0.1 * n)
    else:
        assert all(int(masks[k].sum()) == max(1, round(0.1 * w.numel())) for k, w in weights.items())
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    one_shot = snip_masks(snip_saliency(net, random_batch(), LOSS, exclude=[net.head]), 0.9, allocation)
    assert any(not torch.equal(one_shot[k], masks[k]) for k in masks)  # re-scoring the masked net changes the choice
    single = iterative_snip_masks(
        net, random_batch(), LOSS, sparsity=0.9, steps=1, exclude=[net.head], allocation=allocation
    )
    assert all(torch.equal(one_shot[k], single[k]) for k in masks)  # one round is plain SNIP


def test_scored_weights_exclude_containers() -> None:
    net = tiny_net()
    names = set(scored_weights(net, exclude=[net.head, net.dec2]))
    assert names and not any(n.startswith(("head.", "dec2.")) for n in names)
    assert "enc1.fuse.conv.0.weight" in names


def run_trainer(net: nn.Module, hooks: TrainingHooks, iterations: int = 3) -> None:
    data = [random_batch(seed=i) for i in range(iterations)]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4),
        loss_function=LOSS,
        decollate=False,
    )
    attach_training_hooks(trainer, hooks)
    trainer.run()


def test_mask_enforcer_keeps_masked_weights_zero() -> None:
    net = tiny_net()
    masks = snip_masks(snip_saliency(net, random_batch(), LOSS, exclude=[net.head]), 0.8)
    masked = n_masked(masks)
    assert "head.weight" not in masks and masked > 0
    assert count_masked_zeros(net, masks) == 0  # fresh init: no weight is exactly 0
    head = net.head.weight.detach().clone()
    run_trainer(net, MaskEnforcer(net, masks).hooks())  # masks applied on STARTED and after every optimizer step
    assert count_masked_zeros(net, masks) == masked
    assert not torch.equal(net.head.weight, head) and int((net.head.weight == 0).sum()) == 0  # head trains, unmasked
    kept = [p[masks[n]] for n, p in net.named_parameters() if n in masks]
    assert int(sum((k == 0).sum() for k in kept)) == 0


def test_without_enforcer_masked_weights_regrow() -> None:
    net = tiny_net()
    masks = snip_masks(snip_saliency(net, random_batch(), LOSS, exclude=[net.head]), 0.8)
    apply_masks(net, masks)
    assert count_masked_zeros(net, masks) == n_masked(masks)
    run_trainer(net, TrainingHooks(), iterations=1)
    assert count_masked_zeros(net, masks) < n_masked(masks)
