"""Mixed precision on CPUs with native bfloat16 (AVX512-BF16, AMX): autocast around a network's forward.

MONAI's engines enable ``amp`` with ``torch.autocast("cuda")`` only; :func:`cpu_autocast` gives the same on the
CPU by forward hooks on the network itself, so the trainer, the evaluators and the inferers need no change and
the state_dict is untouched. The output is returned in float32, so losses and metrics run in full precision.
Whether it helps is measured, not assumed (``benchmarks/study``'s machine check times both).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["cpu_autocast", "cpu_supports_bf16", "without_cpu_autocast"]


class _Autocast:
    """The pair of hooks; holds the active context between the pre-hook and the hook of one forward."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.contexts: list[Any] = []

    def enter(self, module: nn.Module, args: Any) -> None:
        context = torch.autocast("cpu", dtype=self.dtype)
        context.__enter__()
        self.contexts.append(context)

    def exit(self, module: nn.Module, args: Any, output: Any) -> Any:
        if self.contexts:
            self.contexts.pop().__exit__(None, None, None)
        return output.float() if isinstance(output, torch.Tensor) and output.is_floating_point() else output


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bfloat16 arithmetic (oneDNN reports AVX512-BF16 or AMX)."""
    return bool(getattr(torch.backends.mkldnn, "is_available", lambda: False)()) and bool(
        torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def cpu_autocast(network: nn.Module, enabled: bool = False, dtype: str = "bfloat16") -> nn.Module:
    """``network`` itself, with its forward run under ``torch.autocast("cpu", dtype)`` when ``enabled``.

    Only for networks on the CPU; on other devices, or when ``enabled`` is false, ``network`` is returned
    unchanged.
    """
    param = next(network.parameters(), None)
    if not enabled or (param is not None and param.device.type != "cpu"):
        return network
    hooks = _Autocast(getattr(torch, dtype))
    network.register_forward_pre_hook(hooks.enter)
    network.register_forward_hook(hooks.exit, always_call=True)  # also when the forward raises: no context left open
    return network


def without_cpu_autocast(network: nn.Module) -> nn.Module:
    """``network`` without the hooks of :func:`cpu_autocast`: a deep copy with them removed when it has them (the
    float32 network, e.g. to export or time it as an FP32 runtime runs it), else ``network`` itself."""

    def autocast_hooks(hooks: dict) -> list[int]:
        return [key for key, hook in hooks.items() if isinstance(getattr(hook, "__self__", None), _Autocast)]

    if not (autocast_hooks(network._forward_pre_hooks) or autocast_hooks(network._forward_hooks)):
        return network
    clone = copy.deepcopy(network)
    for hooks in (clone._forward_pre_hooks, clone._forward_hooks):
        for key in autocast_hooks(hooks):
            del hooks[key]
    return clone
