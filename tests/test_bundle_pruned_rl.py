"""The learned layer-wise sparsity (``allocation: rl``) through ``python -m monai.bundle run compress`` on phantoms:
the baseline at the uniform allocation's MACs with Taylor scores inside each group, the shared-depthwise variant
(reused modules) with the latency cost on ONNX Runtime; the search record, its plot and the latency check in the
pruned bundle's report; the written bundle loads; criteria the search cannot use are refused."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from conftest import TINY

from custom_modules.networks import RAAGR2Net
from raagr2_tools.authoring.config import bundle_network
from raagr2_tools.compression import PruningSettings, PruningStep, StructuredPruner
from raagr2_tools.jobs.bundle_cli import run_bundle

PRUNED = Path(__file__).resolve().parents[1] / "bundles" / "raagr2_pruned"
COMPRESS = [PRUNED / "configs" / "train.json", PRUNED / "configs" / "compress.json"]
RATIO = 0.4


def _teacher(path: Path, sharing: str) -> tuple[Path, RAAGR2Net]:
    torch.manual_seed(0)
    net = RAAGR2Net(out_channels=3, sigmoid=False, features=tuple(TINY["network_def#features"]), sharing=sharing)
    torch.save(net.state_dict(), path)
    return path, net.eval()


def _uniform_macs(net: torch.nn.Module, shape: tuple[int, ...]) -> float:
    pruner = StructuredPruner(copy.deepcopy(net), example_shape=shape, onnx_check=False)
    pruner.step(tp.importance.GroupMagnitudeImportance(p=2), PruningStep(1, RATIO))
    return pruner.check()["flops"] / 2


@pytest.mark.e2e
@pytest.mark.parametrize(
    "variant, sharing, method, cost",
    [("baseline", "none", "taylor", "macs"), ("shared_depthwise", "depthwise", "magnitude_l2", "latency")],
    ids=["baseline-macs-taylor", "shared-latency"],
)
def test_rl_allocation_writes_a_bundle_with_its_search(
    phantom_dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variant, sharing, method, cost
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    dataset_dir, datalist = phantom_dataset
    teacher_path, teacher = _teacher(tmp_path / "teacher.pt", sharing)
    out = tmp_path / "compressed"
    overrides = {
        **TINY,
        "bundle_root": PRUNED,
        "dataset_dir": dataset_dir,
        "data_list_file_path": datalist,
        "teacher_ckpt": teacher_path,
        "output_dir": out,
        "variant": variant,
        "method": method,
        "ratio": RATIO,
        "allocation": "rl",
        "rl_samples": 2,
        "rl_batches": 1,
        "rl_cost": cost,
        "scoring_batches": 1,
        "epochs": 1,
        "measure_latency": False,
    }
    run_bundle(COMPRESS, "compress", overrides)
    suffix = "" if variant == "baseline" else "_shared"
    bundle = out / f"raagr2_pruned_{method}_40{suffix}"
    report = json.loads((bundle / "docs" / "compression_report.json").read_text())
    search = report["allocation_search"]
    assert report["allocation"] == "rl" and len(search["samples"]) == 2
    assert search["target"]["allocation"] == "uniform" and search["target"]["ratio"] == RATIO
    assert search["cost"]["name"] == cost
    assert set(search["chosen"]["ratios"]) == set(search["groups"]) and search["chosen"]["reward"] >= 0
    for sample in search["samples"]:
        assert sample["cost_vs_target"] <= 1.01
    shape = tuple(report["input_shape"])
    flops = report["complexity"]["pruned"]["flops"]
    if cost == "macs":  # equal MACs by construction: the target is the uniform allocation's
        assert flops / 2 == pytest.approx(_uniform_macs(teacher, shape), rel=0.02)
        assert "latency_check" not in report
    else:
        check = report["latency_check"]
        assert (
            check["backend"] == "onnxruntime" and check["target_ms_measured"] > 0 and check["searched_ms_measured"] > 0
        )
        rounds = check["rounds_ms"]
        assert len(rounds["target"]) == len(rounds["searched"]) == 3  # interleaved rounds, ratios round by round
        ratios = sorted(s / t for s, t in zip(rounds["searched"], rounds["target"]))
        assert check["searched_vs_target"] == pytest.approx(ratios[1])
        table = json.loads((out / "latency_table_onnxruntime.json").read_text())
        assert table["calibration"]["points"] and table["machine"]["cpu_model"]
    markdown = (bundle / "docs" / "compression_report.md").read_text()
    assert "Learned layer-wise sparsity (rl)" in markdown and "compression_report_allocation_search.png" in markdown
    figure = bundle / "docs" / "compression_report_allocation_search.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    work_record = json.loads((out / f"{bundle.name}.work" / "allocation_search.json").read_text())
    assert work_record["chosen"] == search["chosen"]
    net = bundle_network(bundle)  # the searched allocation rebuilt from the bundle's pruning history
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    assert net.eval()(torch.randn(1, 4, 32, 32)).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("method", ["slimming", "snip_structured", "snip"])
def test_rl_allocation_refuses_criteria_it_cannot_rank_candidates_with(method: str) -> None:
    with pytest.raises(ValueError, match="cannot rank the candidates|unstructured"):
        PruningSettings(method=method, ratio=0.3, allocation="rl")


def test_bad_search_keys_name_the_key() -> None:
    with pytest.raises(ValueError, match="config key rl_cost"):
        PruningSettings(method="taylor", ratio=0.3, allocation="rl", rl_cost="watts")
    with pytest.raises(ValueError, match="config key latency_backend"):
        PruningSettings(method="taylor", ratio=0.3, allocation="rl", rl_cost="latency", latency_backend="tensorrt")
    with pytest.raises(ValueError, match="config key allocation"):
        PruningSettings(method="taylor", ratio=0.3, allocation="learned")
    with pytest.raises(ValueError, match=r"config key max_layer_ratio: 0.5 caps every group below ratio 0.6"):
        PruningSettings(method="taylor", ratio=0.6, allocation="rl", max_layer_ratio=0.5)
    PruningSettings(method="taylor", ratio=0.6, allocation="global", max_layer_ratio=0.5)  # a cap per step there


@pytest.mark.e2e
def test_global_allocation_at_equal_macs(phantom_dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    dataset_dir, datalist = phantom_dataset
    teacher_path, teacher = _teacher(tmp_path / "teacher.pt", "none")
    out = tmp_path / "compressed"
    overrides = {
        **TINY,
        "bundle_root": PRUNED,
        "dataset_dir": dataset_dir,
        "data_list_file_path": datalist,
        "teacher_ckpt": teacher_path,
        "output_dir": out,
        "method": "magnitude_l2",
        "ratio": RATIO,
        "allocation": "global",
        "equal_macs": True,
        "epochs": 1,
        "measure_latency": False,
    }
    run_bundle(COMPRESS, "compress", overrides)
    report = json.loads((out / "raagr2_pruned_magnitude_l2_40" / "docs" / "compression_report.json").read_text())
    matched = report["matched_global"]
    assert report["allocation"] == "global" and report["equal_macs"] is True and matched["uniform_ratio"] == RATIO
    uniform = _uniform_macs(teacher, tuple(report["input_shape"]))
    assert matched["target_cost"] == pytest.approx(uniform)
    assert report["complexity"]["pruned"]["flops"] / 2 == pytest.approx(uniform, rel=0.02)  # data-free: as searched
    markdown = (out / "raagr2_pruned_magnitude_l2_40" / "docs" / "compression_report.md").read_text()
    assert "global ratio at equal MACs" in markdown
    with pytest.raises(ValueError, match="config key equal_macs"):
        PruningSettings(method="taylor", ratio=0.3, allocation="uniform", equal_macs=True)
