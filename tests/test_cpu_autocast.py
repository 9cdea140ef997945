"""bfloat16 autocast on the CPU around a network's forward (the bundles' ``cpu_bf16`` key)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from custom_modules.networks import RAAGR2Net, cpu_autocast


def _conv_dtypes(net: nn.Module, x: torch.Tensor) -> set[torch.dtype]:
    seen: set[torch.dtype] = set()
    handles = [
        m.register_forward_hook(lambda m, a, o: seen.add(o.dtype)) for m in net.modules() if isinstance(m, nn.Conv2d)
    ]
    try:
        out = net(x)
    finally:
        for h in handles:
            h.remove()
    assert out.dtype == torch.float32
    return seen


def test_cpu_autocast_runs_convs_in_bf16_and_returns_float32() -> None:
    torch.manual_seed(0)
    net = RAAGR2Net(features=(4, 8, 16, 32, 64), out_channels=3).eval()
    x = torch.randn(1, 4, 32, 32)
    keys = list(net.state_dict())
    assert _conv_dtypes(net, x) == {torch.float32}
    assert cpu_autocast(net, enabled=True) is net
    assert _conv_dtypes(net, x) == {torch.bfloat16}
    assert list(net.state_dict()) == keys
    assert not torch.is_autocast_enabled("cpu"), "autocast is left after the forward"


def test_cpu_autocast_disabled_is_identity_and_copies_are_independent() -> None:
    net = RAAGR2Net(features=(4, 8, 16, 32, 64), out_channels=3).eval()
    assert cpu_autocast(net, enabled=False) is net and not net._forward_pre_hooks
    cpu_autocast(net, enabled=True)
    twin = copy.deepcopy(net)
    with torch.no_grad():
        for p in twin.parameters():
            p.zero_()
    x = torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        assert not torch.equal(net(x), twin(x)), "the copy runs its own weights"


def test_a_forward_that_raises_leaves_no_autocast_on() -> None:
    """Torch-Pruning first calls ``model(*example)`` (which unpacks the batch and raises) and then ``model(example)``;
    a failed forward must not leave bfloat16 autocast on for everything after it (an ONNX export then casts to bf16)."""
    import torch

    from custom_modules.networks import RAAGR2Net, cpu_autocast

    net = cpu_autocast(RAAGR2Net(features=(4, 8, 16, 32, 64), out_channels=3, sigmoid=False).eval(), enabled=True)
    try:
        net(torch.randn(4, 32, 32))  # 3-D: refused by the network's input check, inside the hooks
    except ValueError:
        pass
    assert not torch.is_autocast_enabled("cpu")
    assert net(torch.randn(1, 4, 32, 32)).dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
