"""Tests for the weight-shared RAAGR2-Net variants (``docs/network.md``): ``RAAGR2Net(sharing=...)`` and its blocks."""

from __future__ import annotations

import warnings
from typing import List

import pytest
import torch
from torch import nn

from custom_modules.networks import SHARING_MODES, RAAGR2Net, count_parameters
from custom_modules.networks.blocks import (
    PAIRED_DILATION_GROUPS,
    RRCNNBlock,
    SharedDepthwiseKernel,
    SharedReASPP3,
    SpareKernelSharedReASPP3,
)
from raagr2_tools.shipping import export_onnx, onnx_max_abs_diff

SHARED_MODES = ["depthwise", "paired", "encoder_decoder"]
# Spec section 3 totals at the spec widths, out_channels=5.
TOTALS = {"depthwise": 5_046_221, "paired": 5_051_061, "encoder_decoder": 6_621_141}
# Spec section 3 table, "Depthwise Shared".
DEPTHWISE_STAGES = {"enc1": 5_736, "enc2": 36_032, "enc3": 141_696, "enc4": 561_920, "enc5": 2_237_952}
DECODER_AND_HEAD = 2_062_885
SMALL = (4, 8, 16, 32, 64)


def _n(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _kernels(module: nn.Module) -> List[nn.Parameter]:
    """The depthwise kernels ``(C, 1, 3, 3)`` among the parameters of ``module`` (de-duplicated)."""
    return [p for p in module.parameters() if p.dim() == 4 and p.shape[1:] == (1, 3, 3)]


@pytest.fixture(scope="module")
def spec_models() -> dict:
    torch.manual_seed(0)
    return {mode: RAAGR2Net(in_channels=4, out_channels=5, sharing=mode).eval() for mode in SHARED_MODES}


# ----------------------------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("mode", SHARED_MODES)
def test_total_parameters(spec_models, mode):
    assert count_parameters(spec_models[mode]) == TOTALS[mode]
    assert _n(spec_models[mode]) == TOTALS[mode]


def test_depthwise_stage_parameters(spec_models):
    net = spec_models["depthwise"]
    assert {stage: _n(getattr(net, stage)) for stage in DEPTHWISE_STAGES} == DEPTHWISE_STAGES
    assert TOTALS["depthwise"] - sum(DEPTHWISE_STAGES.values()) == DECODER_AND_HEAD
    assert _n(net) - sum(_n(getattr(net, stage)) for stage in DEPTHWISE_STAGES) == DECODER_AND_HEAD
    assert len([m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]) == 49  # ``docs/network.md``


@pytest.mark.parametrize("c,k", [(4, 32), (32, 64), (256, 512)])
def test_block_formulas(c, k):
    assert _n(SharedReASPP3(c, k)) == 10 * c + 9 * c * k + 4 * k * k + 14 * k
    assert _n(SharedReASPP3(c, k, dilation_groups=PAIRED_DILATION_GROUPS)) == 20 * c + 9 * c * k + 4 * k * k + 14 * k
    assert _n(SpareKernelSharedReASPP3(c, k)) == 20 * c + 9 * c * k + 4 * k * k + 14 * k
    assert _n(SharedReASPP3(2 * k, k)) == 22 * k * k + 34 * k  # encoder_decoder's decoder block


def test_shared_block_has_bias_free_fusion_and_residuals():
    block = SharedReASPP3(8, 16)
    assert block.fuse.conv[0].bias is None
    assert all(branch.residual.bias is None for branch in block.branches)
    assert all(branch.pointwise[0].bias is not None for branch in block.branches)
    assert not [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]  # no dense 3x3


def test_module_layout_per_mode(spec_models):
    for mode, net in spec_models.items():
        assert net.sharing == mode
        decoder_type = SharedReASPP3 if mode == "encoder_decoder" else RRCNNBlock
        assert all(isinstance(getattr(net, f"dec{i}"), decoder_type) for i in range(2, 6))
    # the baseline's parameter names are unchanged by the new option
    torch.manual_seed(0)
    small = RAAGR2Net(features=SMALL)
    assert list(RAAGR2Net(features=SMALL, sharing="none").state_dict()) == list(small.state_dict())
    assert "enc1.branches.0.first.0.weight" in small.state_dict()


def test_rejects_unknown_sharing():
    with pytest.raises(ValueError, match="sharing must be one of.*'none'.*'depthwise'.*'paired'.*'encoder_decoder'"):
        RAAGR2Net(sharing="full")
    assert SHARING_MODES == ("none", "depthwise", "paired", "encoder_decoder")


# ----------------------------------------------------------------------------------------------- sharing


@pytest.mark.parametrize("mode,per_block", [("depthwise", 1), ("paired", 2), ("encoder_decoder", 1)])
def test_one_parameter_per_shared_kernel(spec_models, mode, per_block):
    net = spec_models[mode]
    blocks = [m for m in net.modules() if isinstance(m, SharedReASPP3)]
    assert len(blocks) == (9 if mode == "encoder_decoder" else 5)
    for block in blocks:
        kernels = _kernels(block)
        assert len(kernels) == per_block
        c = block.branches[0].residual.in_channels
        assert [tuple(p.shape) for p in kernels] == [(c, 1, 3, 3)] * per_block
        # without de-duplication: still one name per kernel (no aliases, no stale copies)
        named = block.named_parameters(remove_duplicate=False)
        assert len([n for n, p in named if p.dim() == 4 and p.shape[1:] == (1, 3, 3)]) == per_block
    spare = 5 if mode == "encoder_decoder" else 0  # the unused kernels of the encoder blocks
    assert len([m for m in net.modules() if isinstance(m, SharedDepthwiseKernel)]) == per_block * len(blocks) + spare
    # no aliases anywhere in the checkpoint: one state_dict entry per unique parameter or buffer
    assert len(net.state_dict()) == len(list(net.named_parameters())) + len(list(net.named_buffers()))


@pytest.mark.parametrize("groups", [((1, 3, 6, 9),), PAIRED_DILATION_GROUPS])
def test_kernels_called_at_their_dilations(groups):
    block = SharedReASPP3(4, 8, dilation_groups=groups).eval()
    calls = []
    for j, kernel in enumerate(block.kernels):
        kernel.register_forward_hook(lambda mod, args, out, j=j: calls.append((j, args[1], mod.weight)))
    with torch.no_grad():
        block(torch.randn(1, 4, 24, 24))
    expected = [(j, d) for j, group in enumerate(groups) for d in group]
    assert [(j, d) for j, d, _ in calls] == expected
    for j, _, weight in calls:
        assert weight is block.kernels[j].weight  # the very same Parameter object for every branch of a kernel


def _zero_branch(branch: nn.Module) -> None:
    with torch.no_grad():
        for conv in (branch.pointwise[0], branch.residual):
            conv.weight.zero_()
            if conv.bias is not None:
                conv.bias.zero_()


@pytest.mark.parametrize("active", range(4))
def test_gradient_from_each_dilation_reaches_the_kernel(active):
    torch.manual_seed(0)
    block = SharedReASPP3(4, 8).eval()
    for i, branch in enumerate(block.branches):
        if i != active:
            _zero_branch(branch)  # branch i no longer depends on the kernel
    x = torch.randn(2, 4, 24, 24)
    (block(x) * torch.randn(2, 8, 24, 24)).sum().backward()
    kernel = block.kernels[0]
    assert kernel.weight.grad is not None and kernel.weight.grad.abs().sum() > 0
    assert kernel.bias.grad is not None and kernel.bias.grad.abs().sum() > 0


def test_kernel_gradient_is_the_sum_of_the_four_dilations():
    """dL/dW = sum_i VJP of the depthwise conv at dilation_i, each term non-zero: all four branches contribute."""
    torch.manual_seed(0)
    block = SharedReASPP3(4, 8).train()  # exact in any mode: no approximation, just the chain rule
    kernel = block.kernels[0]
    inputs: List[torch.Tensor] = []
    for branch in block.branches:
        branch.register_forward_hook(lambda mod, args, out: inputs.append(args[0]))
    x = torch.randn(2, 4, 24, 24)
    loss = (block(x) * torch.randn(2, 8, 24, 24)).sum()
    grads = torch.autograd.grad(loss, [kernel.weight, *inputs])
    total, upstream = grads[0], grads[1:]
    parts = []
    for dilation, g in zip((1, 3, 6, 9), upstream):
        (part,) = torch.autograd.grad(kernel(x, dilation), kernel.weight, grad_outputs=g)
        assert part.abs().sum() > 0
        parts.append(part)
    torch.testing.assert_close(total, torch.stack(parts).sum(0), atol=1e-4, rtol=1e-4)


def test_kernel_init_is_standard_normal():
    torch.manual_seed(0)
    kernel = SharedDepthwiseKernel(512)
    values = torch.cat([kernel.weight.flatten(), kernel.bias]).detach()
    assert kernel.weight.shape == (512, 1, 3, 3) and kernel.bias.shape == (512,)
    assert abs(values.mean().item()) < 0.05
    assert abs(values.std().item() - 1.0) < 0.05  # the default conv init would give std ~0.19


def test_spare_kernel_is_unused():
    torch.manual_seed(0)
    block = SpareKernelSharedReASPP3(4, 8)
    block(torch.randn(1, 4, 16, 16)).sum().backward()
    assert block.spare.weight.grad is None and block.spare.bias.grad is None
    assert block.block.kernels[0].weight.grad is not None


# ----------------------------------------------------------------------------------------------- forward


@pytest.mark.parametrize("mode", SHARED_MODES)
@pytest.mark.parametrize("size", [192, 240])
def test_forward_shape(spec_models, mode, size):
    with torch.no_grad():
        y = spec_models[mode](torch.randn(1, 4, size, size))
    assert y.shape == (1, 5, size, size)
    assert y.min() >= 0.0 and y.max() <= 1.0


@pytest.mark.parametrize("mode", SHARED_MODES)
def test_torchscript_matches_eager(mode):
    torch.manual_seed(0)
    net = RAAGR2Net(out_channels=3, features=SMALL, sigmoid=False, sharing=mode).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(net)
    x = torch.randn(2, 4, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), atol=1e-5, rtol=1e-5)


@pytest.mark.e2e
@pytest.mark.parametrize("mode", SHARED_MODES)
def test_onnx_dynamo_export_dynamic_hw(tmp_path, mode):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    torch.manual_seed(0)
    # Narrow widths: the export cost (~15-20 s on 2 cores) is torch.export itself, widths only shorten the runs.
    net = RAAGR2Net(out_channels=3, features=SMALL, sigmoid=False, sharing=mode).eval()
    path = export_onnx(
        net, tmp_path / f"raagr2_{mode}.onnx", example_shape=(1, 4, 64, 64)
    )  # ~15 s: torch.export itself
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]
    assert onnx_max_abs_diff(net, path, [(2, 4, 32, 48), (1, 4, 96, 80)]) < 1e-4
