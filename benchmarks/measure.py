"""Measure one variant in this process and write its numbers to JSON (run once per variant by ``compare``).

    python -m benchmarks.measure --bundle DIR --json OUT [--name NAME] [--device cpu|cuda] [--threads N] [--tiny]
    python -m benchmarks.measure --segresnet --json OUT [...]

A bundle's network comes from its ``configs/inference.json`` ``network_def``. Order inside the process:
size and FLOPs, training steps (so the training memory peak is not hidden by an earlier one), slice latency,
volume latency. Times are wall-clock medians; see ``benchmarks/README.md`` for every unit.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from custom_modules.files import write_json
from custom_modules.networks.complexity import FLOP_COUNTER, checkpoint_size_mib, count_flops, count_parameters
from raagr2_tools.authoring import bundle_network

from .machine import device_name
from .settings import BenchSettings, add_settings_args, settings_from_args
from .timing import current_rss_mib, peak_rss_mib, time_repeats

__all__ = ["SEGRESNET_CONFIG", "load_bundle_network", "measure_bundle", "measure_segresnet", "main"]

#: MONAI SegResNet as in the model-zoo ``brats_mri_segmentation`` bundle (random weights here).
SEGRESNET_CONFIG: dict[str, Any] = {
    "_target_": "SegResNet",
    "blocks_down": [1, 2, 2, 4],
    "blocks_up": [1, 1, 1],
    "init_filters": 16,
    "in_channels": 4,
    "out_channels": 3,
    "dropout_prob": 0.2,
}

Log = Callable[[str], None]


def load_bundle_network(bundle: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Network of ``bundle`` built from ``configs/inference.json`` ``network_def``; returns (net, raw config)."""
    raw = json.loads((Path(bundle) / "configs" / "inference.json").read_text())["network_def"]
    return bundle_network(bundle), raw


def step_logger(name: str) -> Log:
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"  [{name} +{time.perf_counter() - start:.1f} s] {msg}", flush=True)

    return log


class _PeakMemory:
    """Peak memory in MiB: process RSS on CPU (``ru_maxrss``), ``torch.cuda.max_memory_allocated`` on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda_overall = 0.0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def _cuda_peak(self) -> float:
        return torch.cuda.max_memory_allocated(self.device) / 2**20

    def start_phase(self) -> float | None:
        """Reset the CUDA peak (keeping the overall one); return memory in use now (RSS or CUDA allocated)."""
        if self.device.type == "cuda":
            self.cuda_overall = max(self.cuda_overall, self._cuda_peak())
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device) / 2**20
        return current_rss_mib()

    def phase_peak(self) -> float:
        """Peak since :meth:`start_phase` on CUDA; on CPU the process peak RSS so far (cannot be reset)."""
        return self._cuda_peak() if self.device.type == "cuda" else peak_rss_mib()

    def overall(self) -> float:
        """Peak of the whole process: CUDA peak over all phases, or peak RSS on CPU."""
        if self.device.type == "cuda":
            return max(self.cuda_overall, self._cuda_peak())
        return peak_rss_mib()


def _empty_result(name: str, kind: str, settings: BenchSettings, device: torch.device) -> dict[str, Any]:
    cpu = device.type == "cpu"
    return {
        "name": name,
        "kind": kind,
        "params": None,
        "checkpoint_mib": None,
        "checkpoint_source": None,
        "flops_per_slice": None,
        "macs_per_slice": None,
        "flop_counter": FLOP_COUNTER,
        "slice_shape": [settings.in_channels, *settings.slice_size],
        "latency_b1_ms": None,
        "latency_batch_ms_per_slice": None,
        "latency_batch_ms": None,
        "volume_shape": [settings.in_channels, *settings.volume_shape],
        "volume_latency_s": None,
        "train_step_s": None,
        "peak_memory_mib": None,
        "train_memory_mib": None,
        "memory_kind": (
            "peak RSS of the child process (ru_maxrss); train = peak RSS after training - RSS before it"
            if cpu
            else "torch.cuda.max_memory_allocated over the child process; train = max allocated during training"
        ),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": device_name(device),
        "raw": {},
    }


def _volume_latency(
    net: nn.Module, inferer: Any, volume: torch.Tensor, warmup_volume: torch.Tensor, settings: BenchSettings
) -> dict[str, Any]:
    """Median seconds per volume of ``inferer(volume, net)`` after ``settings.volume_warmup`` warm-up passes."""
    with torch.no_grad():
        for _ in range(settings.volume_warmup):
            inferer(warmup_volume, net)
        timing = time_repeats(lambda: inferer(volume, net), 0, settings.volume_repeats, volume.device)
    timing["warmup"] = settings.volume_warmup
    timing["warmup_shape"] = list(warmup_volume.shape)
    return timing


def _train_steps(
    net: nn.Module, out_channels: int, settings: BenchSettings, device: torch.device, memory: _PeakMemory, log: Log
) -> dict[str, Any]:
    """Time forward + WeightedBCEDiceLoss + backward + Adam step on random data; restores the weights after."""
    from custom_modules.losses import WeightedBCEDiceLoss

    initial = {k: v.detach().clone() for k, v in net.state_dict().items()}
    x = torch.randn(settings.train_batch, settings.in_channels, *settings.slice_size, device=device)
    y = (torch.rand(settings.train_batch, out_channels, *settings.slice_size, device=device) > 0.5).float()
    loss_fn = WeightedBCEDiceLoss(sigmoid=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.learning_rate)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        optimizer.step()

    net.train()
    log(f"training step, batch {settings.train_batch} ({settings.train_warmup} warm-up + {settings.train_steps} timed)")
    before = memory.start_phase()
    timing = time_repeats(step, settings.train_warmup, settings.train_steps, device)
    peak = memory.phase_peak()
    timing.update(memory_before_mib=before, memory_peak_mib=peak, batch=settings.train_batch, optimizer="Adam")
    timing["memory_mib"] = peak if device.type == "cuda" else (peak - before if before is not None else None)
    net.zero_grad(set_to_none=True)
    net.load_state_dict(initial)
    net.eval()
    gc.collect()
    return timing


def measure_bundle(bundle: str | Path, settings: BenchSettings, name: str | None = None) -> dict[str, Any]:
    """All measurements of one bundle's network (see module docstring); JSON-ready dict, times in ms or s."""
    from monai.inferers import SliceInferer

    bundle = Path(bundle)
    name = name or bundle.name
    log = step_logger(name)
    device = torch.device(settings.device)
    memory = _PeakMemory(device)
    torch.manual_seed(settings.seed)
    net, net_cfg = load_bundle_network(bundle)
    net = net.to(device).eval()
    result = _empty_result(name, "bundle", settings, device)
    result.update(bundle=str(bundle), network_def=net_cfg)

    log("parameters, checkpoint size, FLOPs")
    result["params"] = count_parameters(net)
    model_pt = bundle / "models" / "model.pt"
    if model_pt.is_file():
        result["checkpoint_mib"], result["checkpoint_source"] = model_pt.stat().st_size / 2**20, "models/model.pt"
    else:
        result["checkpoint_mib"] = checkpoint_size_mib(net.state_dict())
        result["checkpoint_source"] = "state_dict (torch.save in memory)"
    result["flops_per_slice"] = count_flops(net, (1, settings.in_channels, *settings.slice_size), device)
    result["macs_per_slice"] = result["flops_per_slice"] / 2
    out_channels = net_cfg.get("out_channels") if isinstance(net_cfg, dict) else None
    if not isinstance(out_channels, int):
        with torch.no_grad():
            out_channels = int(net(torch.zeros(1, settings.in_channels, *settings.slice_size, device=device)).shape[1])
    result["out_channels"] = out_channels

    train = _train_steps(net, out_channels, settings, device, memory, log)
    result["train_step_s"], result["train_memory_mib"] = train["median_s"], train["memory_mib"]
    result["raw"]["train"] = train

    with torch.no_grad():
        for batch, warmup, repeats, key in (
            (1, settings.warmup_b1, settings.repeats_b1, "latency_b1"),
            (settings.latency_batch, settings.warmup_batch, settings.repeats_batch, "latency_batch"),
        ):
            log(f"slice latency, batch {batch} ({warmup} warm-up + {repeats} timed)")
            x = torch.randn(batch, settings.in_channels, *settings.slice_size, device=device)
            timing = time_repeats(lambda: net(x), warmup, repeats, device)
            timing["batch"] = batch
            result["raw"][key] = timing
    result["latency_b1_ms"] = result["raw"]["latency_b1"]["median_s"] * 1e3
    result["latency_batch_ms"] = result["raw"]["latency_batch"]["median_s"] * 1e3
    result["latency_batch_ms_per_slice"] = result["latency_batch_ms"] / settings.latency_batch

    inferer = SliceInferer(
        spatial_dim=2, roi_size=settings.slice_roi, sw_batch_size=settings.sw_batch_size, overlap=0.25, progress=False
    )
    volume = torch.randn(1, settings.in_channels, *settings.volume_shape, device=device)
    depth, sw = settings.volume_shape[2], settings.sw_batch_size
    warm_depth = min(depth, sw + depth % sw)  # a short volume with every sw batch size the timed pass meets
    warmup_volume = volume[..., :warm_depth].clone()
    log(
        f"volume latency {tuple(settings.volume_shape)} SliceInferer roi {tuple(settings.slice_roi)} sw_batch {sw} "
        f"({settings.volume_warmup} warm-up on depth {warm_depth} + {settings.volume_repeats} timed)"
    )
    memory.start_phase()
    timing = _volume_latency(net, inferer, volume, warmup_volume, settings)
    timing["inferer"] = {
        "name": "SliceInferer",
        "spatial_dim": 2,
        "roi_size": list(settings.slice_roi),
        "sw_batch_size": sw,
        "overlap": 0.25,
    }
    result["raw"]["volume"] = timing
    result["volume_latency_s"] = timing["median_s"]
    result["peak_memory_mib"] = memory.overall()
    result["threads"] = torch.get_num_threads()
    log(f"done: volume {result['volume_latency_s']:.2f} s, train step {result['train_step_s']:.2f} s")
    return result


def measure_segresnet(settings: BenchSettings, name: str = "SegResNet (brats_mri_segmentation)") -> dict[str, Any]:
    """The peer: MONAI SegResNet (:data:`SEGRESNET_CONFIG`, random weights) on one volume, SlidingWindowInferer."""
    from monai.inferers import SlidingWindowInferer
    from monai.networks.nets import SegResNet

    log = step_logger(name)
    device = torch.device(settings.device)
    memory = _PeakMemory(device)
    torch.manual_seed(settings.seed)
    kwargs = {k: v for k, v in SEGRESNET_CONFIG.items() if k != "_target_"}
    net = SegResNet(**kwargs).to(device).eval()
    result = _empty_result(name, "peer", settings, device)
    result.update(network_def=copy.deepcopy(SEGRESNET_CONFIG), out_channels=SEGRESNET_CONFIG["out_channels"])
    result["flop_counter"] = None  # per-slice FLOPs do not apply to a 3D network
    result["params"] = count_parameters(net)
    result["checkpoint_mib"] = checkpoint_size_mib(net.state_dict())
    result["checkpoint_source"] = "state_dict (torch.save in memory)"

    inferer = SlidingWindowInferer(
        roi_size=settings.segresnet_roi, sw_batch_size=1, overlap=settings.segresnet_overlap, progress=False
    )
    volume = torch.randn(1, settings.in_channels, *settings.volume_shape, device=device)
    log(
        f"volume latency {tuple(settings.volume_shape)} SlidingWindowInferer roi {tuple(settings.segresnet_roi)} "
        f"overlap {settings.segresnet_overlap} ({settings.volume_warmup} warm-up + {settings.volume_repeats} timed)"
    )
    memory.start_phase()
    timing = _volume_latency(net, inferer, volume, volume, settings)
    timing["inferer"] = {
        "name": "SlidingWindowInferer",
        "roi_size": list(settings.segresnet_roi),
        "sw_batch_size": 1,
        "overlap": settings.segresnet_overlap,
    }
    result["raw"]["volume"] = timing
    result["volume_latency_s"] = timing["median_s"]
    result["peak_memory_mib"] = memory.overall()
    result["memory_kind"] = result["memory_kind"].split(";")[0] + " (no training measured)"
    result["threads"] = torch.get_num_threads()
    log(f"done: volume {result['volume_latency_s']:.2f} s")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--bundle", type=Path, help="bundle folder (configs/inference.json network_def)")
    target.add_argument("--segresnet", action="store_true", help="measure the SegResNet peer instead")
    parser.add_argument("--name", default=None, help="variant name in the output (default: bundle folder name)")
    parser.add_argument("--json", type=Path, required=True, help="where to write the result")
    add_settings_args(parser)
    args = parser.parse_args(argv)
    settings = settings_from_args(args)
    if settings.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda requested but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    if settings.threads:
        torch.set_num_threads(settings.threads)
    if args.segresnet:
        result = measure_segresnet(settings, **({"name": args.name} if args.name else {}))
    else:
        result = measure_bundle(args.bundle, settings, args.name)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, result, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
