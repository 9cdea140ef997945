"""The learned layer-wise sparsity search (rl_search) and the engine's per-group ratios, on small RAAGR2-Nets with and
without the shared-depthwise kernel: one action per Torch-Pruning group, every sample at the target cost,
reproducible for a seed, resumable after a kill, and a clear error for a target no allocation reaches."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from torch import nn

from custom_modules.networks import RAAGR2Net
from custom_modules.networks.blocks.shared_reaspp import SharedDepthwiseKernel
from raagr2_tools.compression import PruningStep, StructuredPruner
from raagr2_tools.compression.rl_search import AllocationSearch, SearchSettings, UnreachableTargetError, mask_agreement
from raagr2_tools.reports.compression import plot_allocation_search

TINY_NET = dict(features=(4, 8, 16, 32, 64), out_channels=3, sigmoid=False)
SHAPE = (1, 4, 32, 32)


def trained_like(net: nn.Module, seed: int = 0) -> nn.Module:
    """Spread BN scales and statistics as training would, so rankings and outputs are not all alike."""
    generator = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=generator) * 1.4 + 0.1
            m.bias.data = torch.randn(m.num_features, generator=generator) * 0.2
            m.running_var.data = torch.rand(m.num_features, generator=generator) + 0.5
    return net.eval()


def _network(sharing: str = "none") -> nn.Module:
    """A small net whose output masks are half on, half off (so pruning changes them and the reward moves)."""
    torch.manual_seed(0)
    net = trained_like(RAAGR2Net(**TINY_NET, sharing=sharing))
    with torch.no_grad():
        logits = net(torch.randn(4, 4, 32, 32, generator=torch.Generator().manual_seed(3)))
        net.head.bias -= logits.transpose(0, 1).reshape(logits.shape[1], -1).median(dim=1).values
    return net


def _teacher_macs(net: nn.Module) -> float:
    return StructuredPruner(copy.deepcopy(net), example_shape=SHAPE, onnx_check=False).teacher_flops / 2


@pytest.fixture(scope="module")
def batches() -> list[torch.Tensor]:
    return [torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(7))]


def test_group_ratios_prune_only_the_named_groups() -> None:
    net = _network()
    groups = StructuredPruner(copy.deepcopy(net), example_shape=SHAPE, onnx_check=False).prunable_groups()
    roots = [g["root"] for g in groups]
    assert len(roots) == len(set(roots)) and "head" not in roots
    chosen = next(g for g in groups if g["root"].startswith("enc4.fuse"))
    pruner = StructuredPruner(copy.deepcopy(net), example_shape=SHAPE, group_ratios={chosen["root"]: 0.5})
    pruner.step(tp.importance.GroupMagnitudeImportance(p=2), PruningStep(1, 1.0))
    after = {g["root"]: g["channels"] for g in pruner.prunable_groups()}
    for g in groups:
        expected = g["channels"] // 2 if g["root"] == chosen["root"] else g["channels"]
        assert after[g["root"]] == expected, g["root"]
    with pytest.raises(ValueError, match="not prunable roots"):
        StructuredPruner(copy.deepcopy(net), example_shape=SHAPE, group_ratios={"nope": 0.5}).make_pruner(
            tp.importance.GroupMagnitudeImportance(p=2), 0.5
        )


@pytest.mark.parametrize("sharing", ["none", "depthwise"])
def test_search_keeps_the_cost_and_its_choice_builds_and_exports(sharing: str, batches, tmp_path: Path) -> None:
    net = _network(sharing)
    target = 0.5 * _teacher_macs(net)
    settings = SearchSettings(samples=3, seed=1)
    search = AllocationSearch(net, batches, target, settings, record_path=tmp_path / "rl.json", example_shape=SHAPE)
    record = search.run()
    assert len(record["samples"]) == 3 and set(record["chosen"]["ratios"]) == set(search.groups)
    for sample in record["samples"]:
        assert sample["cost_vs_target"] <= 1 + settings.cost_tolerance
        assert sample["cost_vs_target"] > 0.9  # scaled up to the target, not left far below it
        assert all(0.0 <= r <= settings.max_ratio for r in sample["ratios"].values())
        assert 0.0 <= sample["reward"] <= 1.0
    assert len({s["reward"] for s in record["samples"]}) > 1 and any(record["policy_logits"])  # it learns
    best = max([s["reward"] for s in record["samples"]] + [record["reference"]["reward"]])
    assert record["chosen"]["reward"] == best
    assert set(record["reference"]["ratios"].values()) == {record["reference"]["ratios"][search.groups[0]]}  # uniform
    assert record["chosen_is_reference"] == (best == record["reference"]["reward"])
    assert json.loads((tmp_path / "rl.json").read_text())["chosen"] == record["chosen"]
    figure = plot_allocation_search(record, tmp_path / "search.png")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 5000
    # the chosen allocation through the engine: forward and ONNX parity checked, the shared kernel pruned as one
    pruner = StructuredPruner(copy.deepcopy(net), example_shape=SHAPE, group_ratios=record["chosen"]["ratios"])
    step = pruner.step(tp.importance.GroupMagnitudeImportance(p=2), PruningStep(1, 1.0))
    assert step["onnx_max_abs_diff"] < 1e-4 and step["flops"] / 2 == pytest.approx(record["chosen"]["cost"])
    if sharing == "depthwise":
        kernels = [m for m in pruner.network.modules() if isinstance(m, SharedDepthwiseKernel)]
        assert kernels and all(k.weight.shape[0] > 0 for k in kernels)


def test_search_is_reproducible_and_resumes_to_the_same_result(batches, tmp_path: Path) -> None:
    net = _network()
    target = 0.6 * _teacher_macs(net)
    settings = SearchSettings(samples=3, seed=4)
    first = AllocationSearch(net, batches, target, settings, record_path=tmp_path / "a.json", example_shape=SHAPE).run()
    again = AllocationSearch(net, batches, target, settings, example_shape=SHAPE).run()
    assert again["chosen"] == first["chosen"] and again["policy_logits"] == first["policy_logits"]
    assert any(s["ratios"] != first["samples"][0]["ratios"] for s in first["samples"][1:])  # the draws differ
    killed = json.loads((tmp_path / "a.json").read_text())  # as if killed after the first sample
    killed["samples"] = killed["samples"][:1]
    killed.pop("chosen")
    (tmp_path / "b.json").write_text(json.dumps(killed))
    resumed = AllocationSearch(net, batches, target, settings, record_path=tmp_path / "b.json", example_shape=SHAPE)
    result = resumed.run()
    assert result["samples"] == first["samples"] and result["chosen"] == first["chosen"]
    other = AllocationSearch(net, batches, target, SearchSettings(samples=3, seed=5), example_shape=SHAPE).run()
    assert other["samples"][0]["ratios"] != first["samples"][0]["ratios"]


def test_unreachable_target_fails_clearly(batches) -> None:
    net = _network()
    with pytest.raises(UnreachableTargetError, match=r"below the smallest reachable with every group at max_ratio 0.5"):
        AllocationSearch(net, batches, 0.05 * _teacher_macs(net), SearchSettings(max_ratio=0.5), example_shape=SHAPE)


def test_search_plot_refuses_an_empty_record(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no samples"):
        plot_allocation_search({"samples": []}, tmp_path / "x.png")


def test_mask_agreement() -> None:
    teacher = torch.tensor([[[[1.0, -1.0], [1.0, -1.0]]]])
    assert mask_agreement(teacher, teacher) == 1.0
    assert mask_agreement(-teacher, teacher) == 0.0
    assert mask_agreement(-torch.ones_like(teacher), -torch.ones_like(teacher)) == 1.0  # both empty
