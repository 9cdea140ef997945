"""Acceptance matrix: every criterion x {baseline, shared} x {one-shot, iterative, layer-wise} on the full-size
RAAGR2-Net at 192 x 192 (tiny data: one scoring slice, one training step where a criterion trains). Every
step is checked by a forward pass at 192 x 192 (the engine raises ``PruningCheckError`` otherwise) and every
result by ONNX Runtime parity (the per-step ONNX check itself is covered by test_compression_engine.py and
the bundle tests; here it would triple the run time)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from custom_modules.compression import (
    METHODS,
    SCHEDULES,
    SlimmingRegularizer,
    StructuredPruner,
    apply_masks,
    get_criterion,
    iterative_snip_masks,
    make_importance,
    make_schedule,
    onnx_parity,
    pruner_class,
    snip_masks,
    snip_saliency,
)
from custom_modules.compression.criteria import scoring_mode
from custom_modules.losses import WeightedBCEDiceLoss
from custom_modules.networks import RAAGR2Net

SHAPE = (1, 4, 192, 192)
RATIO = 0.3


def scoring_batch() -> dict[str, torch.Tensor]:
    """One 192 x 192 slice with a nested WT > TC > ET blob, MRI-like z-scored noise elsewhere."""
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 4, 192, 192, generator=generator)
    yy, xx = torch.meshgrid(torch.arange(192.0), torch.arange(192.0), indexing="ij")
    radius = ((yy - 90) ** 2 + (xx - 100) ** 2).sqrt()
    label = torch.stack([radius < 20, radius < 35, radius < 10]).float()  # TC, WT, ET
    image[:, :, radius < 35] += 2.0
    return {"image": image, "label": label.unsqueeze(0)}


def trained_like(net: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=generator) * 1.4 + 0.1
    return net


def one_training_step(net: nn.Module, batch: dict[str, torch.Tensor], loss_fn: nn.Module, regularizer=None) -> None:
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    net.train()
    optimizer.zero_grad()
    loss_fn(net(batch["image"]), batch["label"]).backward()
    if regularizer is not None:
        regularizer.regularize()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run_structured(net: nn.Module, method: str, schedule: str, batch, loss_fn) -> list[dict]:
    criterion = get_criterion(method)
    pruner = StructuredPruner(net, SHAPE, allocation=criterion.default_allocation, onnx_check=False)
    records = []
    for step in make_schedule(schedule, RATIO, steps=2):
        if criterion.sparse_training:
            regularizer = SlimmingRegularizer(
                lambda: pruner.make_pruner(make_importance(criterion, net), pruner_class=pruner_class(criterion)), net
            )
            regularizer.build()
            one_training_step(net, batch, loss_fn, regularizer)
        importance = make_importance(criterion, net, [batch], loss_fn)
        with scoring_mode(net):
            records.append(pruner.step(importance, step, pruner_class=pruner_class(criterion)))
        net.zero_grad(set_to_none=True)
    assert records[-1]["params"] < pruner.teacher_params
    records[-1]["onnx_max_abs_diff"] = onnx_parity(net, (1, 4, 64, 64))
    return records


def run_snip(net: nn.Module, schedule: str, batch, loss_fn) -> float:
    exclude = [net.head]
    with scoring_mode(net, batch_stats=True):
        if schedule == "oneshot":
            masks = snip_masks(snip_saliency(net, batch, loss_fn, exclude=exclude), RATIO)
        elif schedule == "iterative":
            masks = iterative_snip_masks(net, batch, loss_fn, RATIO, steps=2, exclude=exclude)
        else:
            masks = snip_masks(snip_saliency(net, batch, loss_fn, exclude=exclude), RATIO, allocation="uniform")
    apply_masks(net, masks)
    masked = sum(int((~m).sum()) for m in masks.values())
    scored = sum(m.numel() for m in masks.values())
    assert masked == pytest.approx(RATIO * scored, rel=0.01)
    one_training_step(net, batch, loss_fn)
    apply_masks(net, masks)
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(*SHAPE)).shape == (1, 3, 192, 192)
    return onnx_parity(net, (1, 4, 64, 64))


@pytest.mark.parametrize("variant", ["none", "depthwise"], ids=["baseline", "shared"])
@pytest.mark.parametrize("method", METHODS)
def test_every_criterion_and_schedule_on_the_full_network(method: str, variant: str) -> None:
    torch.manual_seed(0)
    template = trained_like(RAAGR2Net(out_channels=3, sigmoid=False, sharing=variant))
    batch = scoring_batch()
    loss_fn = WeightedBCEDiceLoss(sigmoid=True)
    for schedule in SCHEDULES:
        net = copy.deepcopy(template)
        if method == "snip":
            assert run_snip(net, schedule, batch, loss_fn) <= 1e-4
        else:
            records = run_structured(net, method, schedule, batch, loss_fn)
            assert len(records) == {"oneshot": 1, "iterative": 2, "layerwise": 5}[schedule]
            assert records[-1]["onnx_max_abs_diff"] <= 1e-4
