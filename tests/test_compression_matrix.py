"""Acceptance matrix: every criterion x {baseline, shared} x {one-shot, iterative, layer-wise} on the full-size
RAAGR2-Net at 192 x 192, run by the production loop (:class:`raagr2_tools.compression.CompressionLoop`) with
plain PyTorch callbacks: one scoring slice, a one-step fine-tune that calls the loop's training hooks, and a
Dice evaluation on that slice. Every step is checked by a forward pass at 192 x 192 (the engine raises
``PruningCheckError`` otherwise) and every result, in its deployed (merged) form, by ONNX Runtime parity (the
TorchScript exporter at 64 x 64: the per-step check and the shipped dynamo graph are covered by
test_compression_engine.py and the bundle tests; here they would triple the run time)."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.metrics import compute_dice
from torch import nn

from custom_modules.constants import REGION_CHANNELS
from custom_modules.losses import WeightedBCEDiceLoss
from custom_modules.networks import RAAGR2Net, count_parameters
from raagr2_tools.compression import (
    METHODS,
    SCHEDULES,
    CompressionLoop,
    FineTuneSettings,
    LoopCallbacks,
    PruningSettings,
    TrainingHooks,
)

SHAPE = (1, 4, 192, 192)
RATIO = 0.3

pytestmark = pytest.mark.e2e


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


class PlainCallbacks:
    """The loop's callbacks as a plain PyTorch loop: SGD, one step per epoch, hooks called where a trainer
    calls them; counts what the loop asked for."""

    def __init__(self, net: nn.Module, teacher: nn.Module, batch: dict[str, torch.Tensor], loss_fn: nn.Module) -> None:
        self.net, self.teacher, self.batch, self.loss_fn = net, teacher, batch, loss_fn
        self.calls = {"finetune": 0, "after_backward": 0, "after_step": 0, "evaluate": 0}

    def scoring_batches(self, count: int) -> list[dict[str, torch.Tensor]]:
        return [self.batch] * count

    def finetune(self, epochs: int, hooks: TrainingHooks) -> None:
        self.calls["finetune"] += 1
        optimizer = torch.optim.SGD([p for p in self.net.parameters() if p.requires_grad], lr=1e-3)
        self.net.train()
        for hook in hooks.on_start:
            hook()
        for _ in range(epochs):
            optimizer.zero_grad()
            self.loss_fn(self.net(self.batch["image"]), self.batch["label"]).backward()
            for hook in hooks.after_backward:
                hook()
                self.calls["after_backward"] += 1
            optimizer.step()
            for hook in hooks.after_step:
                hook()
                self.calls["after_step"] += 1
        optimizer.zero_grad(set_to_none=True)

    def evaluate(self, which: str, stage: str) -> dict:
        self.calls["evaluate"] += 1
        net = self.teacher if which == "teacher" else self.net
        net.eval()
        with torch.no_grad():
            pred = (net(self.batch["image"]) > 0).float()
        dice = compute_dice(pred, self.batch["label"], include_background=True, ignore_empty=False)[0]
        row = {"case": "slice", **{f"{r}_dice": float(d) for r, d in zip(REGION_CHANNELS, dice)}}
        return {"cases": [row], "dice": {r: row[f"{r}_dice"] for r in REGION_CHANNELS}, "hd95": {}}


def run_loop(template: nn.Module, method: str, schedule: str, batch, loss_fn):
    teacher = copy.deepcopy(template).eval().requires_grad_(False)
    net = copy.deepcopy(template)
    callbacks = PlainCallbacks(net, teacher, batch, loss_fn)
    pruning = PruningSettings(
        method=method, ratio=RATIO, schedule=schedule, iterative_steps=2, onnx_check=False, example_size=SHAPE[2:]
    )
    loop = CompressionLoop(
        net,
        teacher,
        loss_fn,
        pruning,
        FineTuneSettings(epochs=1),
        LoopCallbacks(callbacks.scoring_batches, callbacks.finetune, callbacks.evaluate),
        final_onnx_exporter=None,
        measure_latency=False,
    )
    outcome = loop.run()
    return net, outcome, callbacks


@pytest.mark.parametrize("variant", ["none", "depthwise"], ids=["baseline", "shared"])
@pytest.mark.parametrize("method", METHODS)
def test_every_criterion_and_schedule_on_the_full_network(method: str, variant: str) -> None:
    from raagr2_tools.shipping.onnx import onnx_parity

    torch.manual_seed(0)
    template = trained_like(RAAGR2Net(out_channels=3, sigmoid=False, sharing=variant))
    teacher_params = count_parameters(template)
    batch = scoring_batch()
    loss_fn = WeightedBCEDiceLoss(sigmoid=True)
    for schedule in SCHEDULES:
        net, outcome, calls = run_loop(template, method, schedule, batch, loss_fn)
        record = outcome.record
        assert set(outcome.finetuned["dice"]) == set(REGION_CHANNELS) and "before_finetune" in record
        net.eval()
        with torch.no_grad():
            assert net(torch.randn(*SHAPE)).shape == (1, 3, 192, 192)
        if method == "snip":
            snip = record["snip"]
            assert snip["masked_weights"] == pytest.approx(RATIO * snip["scored_weights"], rel=0.01)
            assert snip["zeros_after_finetune"] == snip["masked_weights"]  # masks held through fine-tuning
            assert calls.calls["after_step"] >= 1 and outcome.history is None
        else:
            assert len(record["steps"]) == {"oneshot": 1, "iterative": 2, "levelwise": 5}[schedule]
            assert outcome.measurements["complexity"]["pruned"]["params"] < teacher_params == count_parameters(template)
            assert count_parameters(net) == outcome.measurements["complexity"]["pruned"]["params"]
            if method == "slimming":
                assert calls.calls["after_backward"] == len(record["steps"])  # L1 on gamma during sparse training
        assert onnx_parity(net, (1, 4, 64, 64), exporter="torchscript") <= 1e-4
