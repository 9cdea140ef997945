"""Model size and cost helpers used to print complexity tables (parameters, FLOPs, checkpoint size, latency)."""

from __future__ import annotations

import io
import statistics
import time
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "FLOP_COUNTER",
    "probe_input",
    "wall_times_ms",
    "count_parameters",
    "count_flops",
    "checkpoint_size_mib",
    "slice_latency_ms",
]

#: The FLOP counter behind :func:`count_flops`. It works at the ATen level, so it also sees functional
#: convolutions (unlike ptflops). It counts 2 FLOPs per multiply-add and counts only the ops it has
#: formulas for (conv, matmul, ...); elementwise ops, BN, pooling and interpolation count 0.
FLOP_COUNTER = "torch.utils.flop_counter.FlopCounterMode"


def probe_input(shape: Sequence[int], device: str | torch.device = "cpu", seed: int = 0) -> torch.Tensor:
    """A standard-normal tensor of ``shape`` drawn from its own generator (``seed``), for tracing, counting or
    timing a network: measuring a network never moves the global RNG that training and data loading draw from."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*[int(s) for s in shape], generator=generator).to(device)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of unique parameters of ``model`` (a Parameter shared by several modules counts once).

    Args:
        model: the network.
        trainable_only: count only parameters with ``requires_grad``.
    """
    seen = set()
    total = 0
    for p in model.parameters():  # parameters() already de-duplicates by identity; keep it explicit.
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def count_flops(model: nn.Module, input_shape: Sequence[int], device: str | torch.device = "cpu") -> int:
    """FLOPs of one forward pass on a random input of ``input_shape`` (e.g. ``(1, 4, 192, 192)``).

    Counted by :data:`FLOP_COUNTER` (2 FLOPs per multiply-add), with the model in eval mode under
    ``torch.no_grad``. The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        x = probe_input(input_shape, device)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)


def checkpoint_size_mib(state_dict: Mapping[str, torch.Tensor]) -> float:
    """Size in MiB (bytes / 2**20) of ``state_dict`` serialised with ``torch.save`` (in memory)."""
    buffer = io.BytesIO()
    torch.save(dict(state_dict), buffer)
    return buffer.getbuffer().nbytes / 2**20


def wall_times_ms(call: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall milliseconds of ``repeats`` timed calls of ``call`` after ``warmup`` untimed ones: the one timing loop
    behind every latency this product reports."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return times


def slice_latency_ms(
    model: nn.Module, input_shape: Sequence[int], repeats: int = 5, device: str | torch.device = "cpu"
) -> float:
    """Median wall time (ms) of one eval-mode forward pass at ``input_shape`` on ``device`` after one warm-up.

    ``model`` must already be on ``device``. Compare models as ratios measured in the same process.
    """
    model.eval()
    x = probe_input(input_shape, device)
    with torch.inference_mode():
        return statistics.median(wall_times_ms(lambda: model(x), repeats))
