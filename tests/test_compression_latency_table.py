"""The per-layer latency table of the latency-aware learned allocation, on a small RAAGR2-Net with real ONNX Runtime
(and OpenVINO) sessions: one entry per conv at its teacher width, new widths timed once and kept, the file reused only
for the network, shape, backend and CPU it was measured for, and the latency cost holding the search at its target.
No timing is asserted (speed lives in benchmarks/latency_table.py), only structure and consistency."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch_pruning as tp

from custom_modules.networks import RAAGR2Net
from raagr2_tools.compression import PruningStep, StructuredPruner
from raagr2_tools.compression.latency_table import (
    LatencyTable,
    conv_layers,
    conv_model,
    measure_network_ms,
    time_onnx_ms,
    uniform_pruned,
)
from raagr2_tools.compression.rl_search import AllocationSearch, LatencyCost, SearchSettings, uniform_cost

TINY_NET = dict(features=(4, 8, 16, 32, 64), out_channels=3, sigmoid=False)
SHAPE = (1, 4, 32, 32)


def _network(sharing: str = "none") -> RAAGR2Net:
    torch.manual_seed(0)
    return RAAGR2Net(**TINY_NET, sharing=sharing).eval()


@pytest.fixture(scope="module")
def table_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("latency") / "table.json"
    LatencyTable.load_or_measure(path, _network(), SHAPE)
    return path


def test_table_holds_every_conv_at_its_teacher_width_and_a_calibration(table_file: Path) -> None:
    record = json.loads(table_file.read_text())
    layers = conv_layers(_network(), SHAPE)
    assert set(record["layers"]) == set(layers) and record["backend"] == "onnxruntime"
    for name, conv in layers.items():
        entry = record["layers"][name]
        key = f"{conv['in_channels']}x{conv['out_channels']}g{conv['groups']}"
        assert entry["ms"][key] > 0, name
        assert entry["calls"] == conv["calls"] and entry["input_hw"] == conv["input_hw"]
    assert any(layer["calls"] == 3 for layer in layers.values())  # the recurrent convs, called three times
    calibration = record["calibration"]
    assert [p["uniform_ratio"] for p in calibration["points"]] == [0.0, 0.3, 0.6]
    assert record["machine"]["cpu_model"] and "cpu_flags" in record["machine"]


def test_new_widths_are_timed_once_and_the_file_is_reused(table_file: Path) -> None:
    table = LatencyTable.load_or_measure(table_file, _network(), SHAPE)
    before = table.entries()
    pruned = uniform_pruned(_network(), 0.45, SHAPE)
    first = table.predict_ms(pruned)
    added = table.entries() - before
    assert added > 0 and table.new_entries == added
    assert table.predict_ms(pruned) == first and table.entries() - before == added  # looked up, not timed again
    conv_ms, kept = table.features(pruned)
    assert first == pytest.approx(conv_ms + table.record["calibration"]["b_ms"] * kept) and 0 < kept < 1
    table.save()
    again = LatencyTable.load_or_measure(table_file, _network(), SHAPE)
    assert again.entries() == table.entries()


def test_a_table_of_another_network_or_shape_is_not_used(table_file: Path, tmp_path: Path) -> None:
    table = LatencyTable(json.loads(table_file.read_text()))
    other = RAAGR2Net(features=(8, 16, 32, 64, 128), out_channels=3, sigmoid=False).eval()
    with pytest.raises(ValueError, match="no entry for the convs|another network"):
        table.features(RAAGR2Net(**TINY_NET, sharing="depthwise").eval())
    from raagr2_tools.compression.latency_table import network_signature

    assert not table.matches(network_signature(other, SHAPE), "onnxruntime")
    assert not table.matches(network_signature(_network(), (1, 4, 64, 64)), "onnxruntime")
    assert not table.matches(network_signature(_network(), SHAPE), "openvino")
    assert table.matches(network_signature(_network(), SHAPE), "onnxruntime")


def test_a_pruned_network_in_split_form_is_timed_as_deployed() -> None:
    net = _network()
    pruner = StructuredPruner(copy.deepcopy(net), SHAPE, onnx_check=False)
    pruner.step(tp.importance.GroupMagnitudeImportance(p=2), PruningStep(1, 0.3))
    split, merged = conv_layers(pruner.network, SHAPE), conv_layers(uniform_pruned(net, 0.3, SHAPE), SHAPE)
    assert split == merged and all(".slots." not in name for name in split)


def test_whole_network_and_openvino_timings_run() -> None:
    assert measure_network_ms(_network(), SHAPE, repeats=2, sessions=1) > 0
    conv = {"groups": 1, "kernel": [3, 3], "stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "input_hw": [8, 8]}
    assert time_onnx_ms("openvino", conv_model(conv, 4, 8), (1, 4, 8, 8), repeats=2) > 0
    with pytest.raises(ValueError, match="latency backend must be one of"):
        time_onnx_ms("tensorrt", conv_model(conv, 4, 8), (1, 4, 8, 8), repeats=2)


@pytest.mark.parametrize("sharing", ["none", "depthwise"])
def test_search_at_the_uniform_allocations_predicted_latency(sharing: str, tmp_path: Path) -> None:
    net = _network(sharing)
    table = LatencyTable.load_or_measure(tmp_path / "table.json", net, SHAPE)
    cost = LatencyCost(table)
    target = uniform_cost(net, 0.4, cost, example_shape=SHAPE)
    settings = SearchSettings(samples=2, seed=0)
    batches = [torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))]
    search = AllocationSearch(net, batches, target, settings, cost=cost, example_shape=SHAPE)
    record = search.run()
    assert record["cost"]["name"] == "latency" and record["cost"]["unit"] == "ms"
    for sample in record["samples"]:  # at or just below the target: new widths are timed as the bisection goes
        assert 0.5 < sample["cost_vs_target"] <= 1 + settings.cost_tolerance
    assert record["teacher_cost"] > 0  # not necessarily above the target: odd widths can be slower on tiny nets


def test_a_network_under_cpu_bf16_autocast_is_timed_in_float32(tmp_path: Path) -> None:
    from custom_modules.networks import cpu_autocast, without_cpu_autocast

    net = cpu_autocast(_network(), enabled=True)  # as the bundles build it with cpu_bf16 true
    plain = without_cpu_autocast(net)
    assert plain is not net and not plain._forward_hooks and net._forward_hooks  # the bundle's network keeps them
    assert measure_network_ms(net, SHAPE, repeats=2, sessions=1) > 0  # ONNX Runtime has no bfloat16 Conv
    assert without_cpu_autocast(plain) is plain
