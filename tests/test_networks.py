"""Tests for custom_modules.networks: RAAGR2-Net (``docs/network.md``), its blocks and the complexity helpers."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from custom_modules.networks import FLOP_COUNTER, RAAGR2Net, checkpoint_size_mib, count_flops, count_parameters
from custom_modules.networks.blocks import AttentionBlock, ConvOne, ReASPP3, RecurrentBlock, RRCNNBlock, UpConv
from raagr2_tools.shipping import export_onnx, onnx_max_abs_diff

# Spec section 2.3, layer table (out_channels=5).
STAGE_PARAMS = {
    "enc1": 14_176,
    "enc2": 82_880,
    "enc3": 325_504,
    "enc4": 1_289_984,
    "enc5": 5_135_872,
    "up5": 1_180_416,
    "att5": 99_840,
    "dec5": 269_056,
    "up4": 295_296,
    "att4": 25_344,
    "dec4": 68_992,
    "up3": 73_920,
    "att3": 6_528,
    "dec3": 18_112,
    "up2": 18_528,
    "att2": 1_728,
    "dec2": 4_960,
    "head": 165,
}
TOTAL_PARAMS = 8_911_301


@pytest.fixture(scope="module")
def spec_model() -> RAAGR2Net:
    torch.manual_seed(0)
    return RAAGR2Net(in_channels=4, out_channels=5).eval()


def _n(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------------- parameters


def test_total_parameters(spec_model):
    assert count_parameters(spec_model) == TOTAL_PARAMS
    assert _n(spec_model) == TOTAL_PARAMS
    assert sum(STAGE_PARAMS.values()) == TOTAL_PARAMS


@pytest.mark.parametrize("stage,expected", list(STAGE_PARAMS.items()))
def test_stage_parameters(spec_model, stage, expected):
    assert _n(getattr(spec_model, stage)) == expected


def test_subtotals_and_bn_footprint(spec_model):
    encoder = sum(_n(getattr(spec_model, f"enc{i}")) for i in range(1, 6))
    assert encoder == 6_848_416
    assert TOTAL_PARAMS - encoder == 2_062_885
    bns = [m for m in spec_model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 69
    assert sum(bn.running_mean.numel() + bn.running_var.numel() for bn in bns) == 22_656
    assert all(bn.eps == 1e-5 and bn.momentum == 0.1 for bn in bns)
    # every conv has a bias in the baseline
    assert all(m.bias is not None for m in spec_model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("c,k", [(4, 32), (32, 64), (256, 512)])
def test_block_formulas(c, k):
    assert _n(ReASPP3(c, k)) == 10 * k * k + 19 * c * k + 47 * k
    assert _n(UpConv(c, k)) == 9 * c * k + 3 * k
    assert _n(ConvOne(k)) == k * k + 13 * k
    assert _n(RecurrentBlock(k)) == k * k + 13 * k
    assert _n(RRCNNBlock(c, k)) == c * k + 2 * k * k + 27 * k
    assert _n(AttentionBlock(k, k, k // 2)) == 3 * k * k // 2 + 6 * k


def test_reaspp_structure():
    block = ReASPP3(32, 64)
    convs3 = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert [(m.groups, m.dilation[0], m.padding[0]) for m in convs3] == [(32, 1, 1), (32, 3, 3), (1, 6, 6), (1, 9, 9)]
    assert all(m.out_channels == 64 for m in convs3)


def test_recurrent_block_reuses_one_conv_three_times():
    block = RecurrentBlock(8).eval()
    calls = []
    block.conv.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        block(torch.randn(1, 8, 8, 8))
    assert len(calls) == 3
    assert len([m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]) == 1


def test_attention_gate_is_per_channel():
    gate = AttentionBlock(16, 16, 8)
    assert gate.psi[0].out_channels == 16  # 2 * F_int == F, not a single-channel gate


# ----------------------------------------------------------------------------------------------- forward


@pytest.mark.parametrize("size", [192, 240])
def test_forward_shape(spec_model, size):
    with torch.no_grad():
        y = spec_model(torch.randn(1, 4, size, size))
    assert y.shape == (1, 5, size, size)
    assert y.min() >= 0.0 and y.max() <= 1.0  # sigmoid=True


def test_sigmoid_false_returns_logits():
    torch.manual_seed(0)
    small = (8, 16, 32, 64, 128)
    logits_net = RAAGR2Net(out_channels=3, features=small, sigmoid=False).eval()
    prob_net = RAAGR2Net(out_channels=3, features=small, sigmoid=True).eval()
    prob_net.load_state_dict(logits_net.state_dict())
    x = torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.sigmoid(logits_net(x)), prob_net(x))


def test_rejects_non_divisible_input(spec_model):
    with pytest.raises(ValueError, match=r"divisible by 16.*\[1, 4, 200, 200\]"):
        spec_model(torch.randn(1, 4, 200, 200))
    with pytest.raises(ValueError, match="divisible by 16"):
        spec_model(torch.randn(4, 192, 192))


def test_torchscript_matches_eager():
    torch.manual_seed(0)
    net = RAAGR2Net(out_channels=3, sigmoid=False).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(net)
    x = torch.randn(1, 4, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), atol=1e-5, rtol=1e-5)
        with pytest.raises((ValueError, torch.jit.Error), match="divisible by 16"):
            scripted(torch.randn(1, 4, 40, 40))


@pytest.mark.e2e
def test_onnx_dynamo_export_dynamic_hw(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    torch.manual_seed(0)
    net = RAAGR2Net(out_channels=3, sigmoid=False).eval()
    path = export_onnx(net, tmp_path / "raagr2.onnx", example_shape=(1, 4, 64, 64))  # ~15 s: torch.export itself
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]
    assert onnx_max_abs_diff(net, path, [(2, 4, 32, 48), (1, 4, 96, 80)]) < 1e-4


# ----------------------------------------------------------------------------------------------- complexity


class _FunctionalConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, 1, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, padding=1)


def test_count_flops_sees_functional_conv():
    assert "FlopCounterMode" in FLOP_COUNTER
    # 4x4 output pixels x 9 multiply-adds x 2 FLOPs
    assert count_flops(_FunctionalConv(), (1, 1, 4, 4)) == 2 * 9 * 16


def test_count_flops_scales_with_input():
    net = RAAGR2Net(out_channels=3, features=(8, 16, 32, 64, 128)).train()
    small = count_flops(net, (1, 4, 32, 32))
    large = count_flops(net, (1, 4, 64, 64))
    assert 0 < small < large
    assert large == 4 * small  # fully convolutional: FLOPs proportional to H*W
    assert net.training  # mode restored


def test_count_parameters_counts_shared_once():
    conv = nn.Conv2d(2, 2, 1)
    shared = nn.Sequential(conv, conv)
    assert count_parameters(shared) == 2 * 2 + 2


def test_checkpoint_size(spec_model):
    size = checkpoint_size_mib(spec_model.state_dict())
    assert 34.0 < size < 34.5  # spec: about 34.24-34.26 MiB (depends on key names)
    params_mib = TOTAL_PARAMS * 4 / 2**20
    assert size > params_mib
