"""Deployment latency of one variant in this process (run once per variant, in a fresh child, by ``deploy``).

    python -m benchmarks.deploy_measure --spec SPEC.json --json OUT.json

``SPEC.json`` (written by :mod:`benchmarks.deploy`) names the bundle, an optional one-shot pruning of its
network, the input volume and calibration slices (``.npy``), the backends, threads and repeats. Order in the
process: build (and prune) the network, give random weights trained-like output statistics
(:func:`calibrate_random_weights`), count parameters and FLOPs, time the matmul reference, export every
backend, time a batch-1 slice per backend, time the full volume per backend (``torch`` first: its mask is the
agreement reference), then the ``skip`` and ``skip+crop`` options with ``torch`` and the fastest backend.
A backend that cannot be built or run is recorded in ``backend_errors`` and skipped. See
``benchmarks/README.md`` for every column and unit.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from custom_modules.constants import REGION_CHANNELS as REGIONS
from custom_modules.files import write_json

from .machine import device_name
from .measure import step_logger
from .timing import synchronize, time_repeats

__all__ = [
    "CPU_BACKENDS",
    "CUDA_BACKENDS",
    "OPTIONS",
    "build_network",
    "calibrate_random_weights",
    "matmul_gflops",
    "region_dice",
    "measure_variant",
    "main",
]

#: backends measured on ``--device cpu``; ``CUDA_BACKENDS`` adds the GPU-only ONNX Runtime FP16 providers
CPU_BACKENDS = ("torch", "torchscript", "ort_fp32", "ort_int8")
CUDA_BACKENDS = CPU_BACKENDS + ("ort_cuda_fp16", "ort_trt_fp16")

#: inference option -> (skip_empty_slices, crop_to_brain) of ``BrainSliceInferer``. Cropping implies skipping
#: (a slice without brain has no brain box), so "crop" alone is the same as "skip+crop".
OPTIONS: dict[str, tuple[bool, bool]] = {"full": (False, False), "skip": (True, False), "skip+crop": (True, True)}


# --------------------------------------------------------------------------------------------------------------
# network


def build_network(spec: dict[str, Any], log: Callable[[str], None]) -> tuple[nn.Module, dict[str, Any]]:
    """The variant's network (eval, CPU) and what was done to it: bundle ``network_def`` (with the spec's
    overrides), ``models/model.pt`` when it exists and fits, then the optional one-shot structured pruning
    (merged back to grouped convs: the deployed form)."""
    from raagr2_tools.authoring import bundle_network

    bundle = Path(spec["bundle"])
    torch.manual_seed(int(spec.get("seed", 0)))
    overrides = spec.get("overrides") or {}
    net = bundle_network(bundle, overrides).eval()
    info: dict[str, Any] = {"bundle": str(bundle), "overrides": overrides, "weights": "random (seeded)"}
    ckpt = bundle / "models" / "model.pt"
    if ckpt.is_file() and not overrides:
        try:
            net.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
            info["weights"] = "models/model.pt"
        except Exception as e:  # a checkpoint that does not fit: say so, keep random weights
            info["weights_error"] = f"{type(e).__name__}: {e}"[:300]
    prune = spec.get("prune")
    if prune:
        from custom_modules.networks.complexity import count_parameters
        from custom_modules.networks.pruned import merge_split_convs
        from raagr2_tools.compression import StructuredPruner, get_criterion, make_importance, make_schedule

        log(
            f"pruning {prune['ratio']:.0%} of the channels ({prune['criterion']}, one shot, "
            f"round_to {prune['round_to']})"
        )
        before = count_parameters(net)
        channels = int(getattr(net, "init_args", {}).get("in_channels", 4))
        pruner = StructuredPruner(net, (1, channels, 64, 64), round_to=prune["round_to"] or None, onnx_check=False)
        pruner.step(
            make_importance(get_criterion(prune["criterion"]), net), make_schedule("oneshot", prune["ratio"])[0]
        )
        merged = merge_split_convs(net)
        net.eval()
        info["pruning"] = {
            **prune,
            "params_before": before,
            "params_after": count_parameters(net),
            "merged_convs": merged,
        }
    return net, info


def _sigmoid_output(net: nn.Module) -> bool:
    return bool(getattr(net, "init_args", {}).get("sigmoid", False))


def calibrate_random_weights(
    net: nn.Module, slices: torch.Tensor, positive_fraction: float = 0.1, background_quantile: float = 0.999
) -> dict[str, Any]:
    """Give a randomly initialised network the output statistics of a trained one, without training.

    Random weights with default BatchNorm statistics give almost constant logits (every voxel the same class),
    which would make mask agreement meaningless. Here (1) every BatchNorm's running statistics are set to
    those of ``slices (N, C, H, W)`` (one pass in train mode, dropout off), and (2) for each output channel
    of the 1x1 ``head`` conv the sign and bias are chosen so that the logit is positive on about
    ``positive_fraction`` of the brain pixels (non-zero input) and on at most ``1 - background_quantile`` of
    the background pixels, as a trained network predicts (small tumour regions, background negative). The cost
    of the network does not change. Returns the fractions of positive pixels reached per region.
    """
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    net.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
        m.train()
    with torch.no_grad():
        net(slices)
    for m in bns:
        m.momentum = 0.1
    net.eval()
    head = getattr(net, "head", None)
    stats: dict[str, Any] = {
        "bn_layers": len(bns),
        "slices": int(slices.shape[0]),
        "positive_fraction": positive_fraction,
    }
    if _sigmoid_output(net) or not isinstance(head, nn.Conv2d) or head.bias is None or head.kernel_size != (1, 1):
        stats["head"] = "unchanged (no 1x1 logit head)"
        return stats
    with torch.no_grad():
        logits = net(slices)
    brain = (slices != 0).any(dim=1)
    regions = {}
    for c in range(logits.shape[1]):
        name = REGIONS[c] if c < len(REGIONS) else str(c)
        best = None
        for sign in (1.0, -1.0):
            inside, outside = sign * logits[:, c][brain], sign * logits[:, c][~brain]
            threshold = float(torch.quantile(inside, 1.0 - positive_fraction)) if inside.numel() else 0.0
            if outside.numel():
                threshold = max(threshold, float(torch.quantile(outside, background_quantile)))
            positive = float((inside > threshold).float().mean()) if inside.numel() else 0.0
            if best is None or positive > best[1]:
                best = (sign, positive, threshold)
        sign, _, threshold = best
        with torch.no_grad():
            head.weight[c] *= sign
            head.bias[c] = sign * head.bias[c] - threshold
        regions[name] = {"sign": sign}
    with torch.no_grad():
        logits = net(slices)
    for c, name in enumerate(regions):
        regions[name]["brain_positive"] = float((logits[:, c][brain] > 0).float().mean()) if brain.any() else 0.0
        regions[name]["background_positive"] = (
            float((logits[:, c][~brain] > 0).float().mean()) if (~brain).any() else 0.0
        )
    stats["head"] = "sign and bias set per channel"
    stats["regions"] = regions
    return stats


# --------------------------------------------------------------------------------------------------------------
# references and metrics


def matmul_gflops(n: int, repeats: int, device: torch.device) -> dict[str, Any]:
    """GFLOP/s of ``torch.mm`` of two ``n x n`` float32 matrices (2 n^3 FLOPs), median of ``repeats`` after 1."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device)
    b = torch.randn(n, n, generator=generator).to(device)
    timing = time_repeats(lambda: torch.mm(a, b), 1, repeats, device)
    flops = 2 * n**3
    return {"n": n, "flops": flops, "gflops": flops / timing["median_s"] / 1e9, **timing}


def region_dice(mask: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Per-channel Dice of two ``(R, ...)`` bool masks (1.0 where both are empty), keyed by :data:`REGIONS`."""
    out = {}
    for c in range(mask.shape[0]):
        a, b = mask[c], reference[c]
        total = int(a.sum()) + int(b.sum())
        out[REGIONS[c] if c < len(REGIONS) else str(c)] = 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total
    return out


class _TimedNetwork:
    """Calls ``network`` and adds the wall time of each call (synchronised on CUDA) to ``seconds``."""

    def __init__(self, network: Callable[..., torch.Tensor], device: torch.device) -> None:
        self.network, self.device, self.seconds, self.calls = network, device, 0.0, 0

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        synchronize(self.device)
        start = time.perf_counter()
        out = self.network(x, *args, **kwargs)
        synchronize(self.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


# --------------------------------------------------------------------------------------------------------------
# backends


def _build_backends(
    net: nn.Module,
    spec: dict[str, Any],
    calibration: np.ndarray,
    device: torch.device,
    threads: int,
    tmp: Path,
    log: Callable[[str], None],
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, str]]:
    """``{backend: callable}``, ``{backend: build info}`` and ``{backend: error}`` for the spec's backends."""
    import onnxruntime

    from custom_modules.inference import OnnxRuntimeNetwork

    wanted = list(spec["backends"])
    built: dict[str, Any] = {}
    info: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    channels = int(calibration.shape[1])
    available = onnxruntime.get_available_providers()
    fp32_path = tmp / "model.onnx"

    def ort(path: Path, providers: Sequence[Any]) -> OnnxRuntimeNetwork:
        return OnnxRuntimeNetwork(path, providers=providers, intra_op_num_threads=threads)

    def need_fp32() -> Path:
        if "ort_fp32" in errors:
            raise RuntimeError(f"no FP32 ONNX model ({errors['ort_fp32']})")
        if not fp32_path.is_file():
            start = time.perf_counter()
            _export_onnx(copy.deepcopy(net).cpu(), fp32_path, (1, channels, 64, 64), spec)
            info.setdefault("ort_fp32", {})["export_s"] = time.perf_counter() - start
        return fp32_path

    for backend in wanted:
        start = time.perf_counter()
        try:
            if backend == "torch":
                built[backend], what = net, {"runtime": f"torch {torch.__version__} eager FP32"}
            elif backend == "torchscript":
                log("TorchScript: torch.jit.script")
                built[backend] = torch.jit.script(net).eval()
                what = {"runtime": "torch.jit.script (as monai.bundle ckpt_export), FP32"}
            elif backend == "ort_fp32":
                log(f"ONNX export ({spec['onnx_exporter']} exporter, opset {spec['opset']})")
                path = need_fp32()
                providers = (
                    ["CUDAExecutionProvider", "CPUExecutionProvider"]
                    if device.type == "cuda"
                    else ["CPUExecutionProvider"]
                )
                built[backend] = ort(path, [p for p in providers if p in available])
                what = {"runtime": f"onnxruntime {onnxruntime.__version__} FP32"}
            elif backend == "ort_int8":
                from raagr2_tools.shipping import quantize_int8

                path = need_fp32()
                log(f"INT8 quantisation (QDQ, MinMax on {len(calibration)} slices)")
                q_start = time.perf_counter()
                done = quantize_int8(path, tmp / "model_int8.onnx", list(calibration))
                built[backend] = ort(tmp / "model_int8.onnx", ["CPUExecutionProvider"])
                what = {
                    "runtime": f"onnxruntime {onnxruntime.__version__} INT8 (CPU EP)",
                    "quantize_s": time.perf_counter() - q_start,
                    "quantization": {k: v for k, v in done.items() if k != "float_nodes"},
                }
            elif backend == "ort_cuda_fp16":
                from raagr2_tools.shipping import convert_fp16

                if device.type != "cuda" or "CUDAExecutionProvider" not in available:
                    raise RuntimeError(
                        f"needs --device cuda and ONNX Runtime's CUDAExecutionProvider (available: {available})"
                    )
                convert_fp16(need_fp32(), tmp / "model_fp16.onnx")
                built[backend] = ort(tmp / "model_fp16.onnx", ["CUDAExecutionProvider", "CPUExecutionProvider"])
                what = {"runtime": f"onnxruntime {onnxruntime.__version__} FP16 (CUDA EP)"}
            elif backend == "ort_trt_fp16":
                if device.type != "cuda" or "TensorrtExecutionProvider" not in available:
                    raise RuntimeError(
                        f"needs --device cuda and ONNX Runtime's TensorrtExecutionProvider (available: {available})"
                    )
                options = {
                    "trt_fp16_enable": True,
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(tmp / "trt"),
                }
                (tmp / "trt").mkdir(exist_ok=True)
                providers = [("TensorrtExecutionProvider", options), "CUDAExecutionProvider", "CPUExecutionProvider"]
                built[backend] = ort(need_fp32(), providers)
                what = {"runtime": f"onnxruntime {onnxruntime.__version__} TensorRT EP, trt_fp16_enable (FP32 model)"}
            else:
                raise ValueError(f"unknown backend {backend!r}; known: {CUDA_BACKENDS}")
            providers = getattr(built[backend], "providers", None)
            info[backend] = {
                **info.get(backend, {}),
                **what,
                "build_s": time.perf_counter() - start,
                "providers": providers,
            }
        except Exception as e:
            errors[backend] = f"{type(e).__name__}: {e}"[:500]
            log(f"backend {backend} unavailable: {errors[backend]}")
            built.pop(backend, None)
    return built, info, errors


def _export_onnx(net: nn.Module, path: Path, example_shape: Sequence[int], spec: dict[str, Any]) -> None:
    """FP32 ONNX with dynamic batch/H/W through the project's one exporter: the shipped dynamo graph, or
    (``legacy``, for ``--tiny``: seconds instead of tens of seconds) its TorchScript exporter."""
    from raagr2_tools.shipping.onnx import export_onnx

    exporter = "torchscript" if spec["onnx_exporter"] == "legacy" else "dynamo"
    export_onnx(net, path, example_shape, opset=int(spec["opset"]), exporter=exporter)


# --------------------------------------------------------------------------------------------------------------
# measurements


def _warmup_volume(volume: torch.Tensor, option: str, sw: int) -> torch.Tensor:
    """A short sub-volume of brain slices from the middle of ``volume (1, C, H, W, D)`` that meets both batch
    sizes (``sw`` and the remainder) the timed pass of ``option`` meets (crop batches vary; ``sw`` slices)."""
    depth = volume.shape[-1]
    brain = torch.nonzero((volume[0] != 0).flatten(0, 2).any(dim=0)).flatten().tolist() or list(range(depth))
    if option == "full":
        count, pool = min(depth, sw + depth % sw), list(range(depth))
    else:
        count, pool = min(len(brain), sw + (len(brain) % sw if option == "skip" else 0)), brain
    mid = max(0, len(pool) // 2 - count // 2)
    return volume[..., pool[mid : mid + count]].contiguous()


def _threshold(out: torch.Tensor, sigmoid_output: bool) -> torch.Tensor:
    """``(1, R, H, W, D)`` network output -> ``(R, H, W, D)`` bool mask (sigmoid > 0.5, i.e. logit > 0)."""
    return (out[0] > 0.5) if sigmoid_output else (out[0] > 0)


def _volume_row(
    network: Any,
    backend: str,
    option: str,
    volume: torch.Tensor,
    spec: dict[str, Any],
    device: torch.device,
    flops_per_slice: int,
    sigmoid_output: bool,
) -> tuple[dict[str, Any], torch.Tensor]:
    """Time ``volume`` through ``BrainSliceInferer`` with ``option``; returns the row and its mask."""
    from custom_modules.inference import BrainSliceInferer

    skip, crop = OPTIONS[option]
    sw = int(spec["sw_batch_size"])
    inferer = BrainSliceInferer(
        roi_size=tuple(volume.shape[2:4]), sw_batch_size=sw, overlap=0.25, skip_empty_slices=skip, crop_to_brain=crop
    )
    timed = _TimedNetwork(network, device)
    warm = _warmup_volume(volume, option, sw)
    times, net_times = [], []
    with torch.no_grad():
        inferer(warm, timed)
        for _ in range(int(spec["volume_repeats"])):
            timed.reset()
            synchronize(device)
            start = time.perf_counter()
            out = inferer(volume, timed)
            synchronize(device)
            times.append(time.perf_counter() - start)
            net_times.append(timed.seconds)
    stats = dict(inferer.last_stats)
    seconds, net_seconds = statistics.median(times), statistics.median(net_times)
    executed = flops_per_slice * stats["slices"] * stats["pixels_run_fraction"]
    row = {
        "backend": backend,
        "option": option,
        "skip_empty_slices": skip,
        "crop_to_brain": crop,
        "volume_s": seconds,
        "volume_times_s": times,
        "network_s": net_seconds,
        "network_fraction": net_seconds / seconds if seconds > 0 else None,
        "network_calls": timed.calls,
        "warmup_shape": list(warm.shape),
        "slices": stats["slices"],
        "slices_run": stats["slices_run"],
        "pixels_run_fraction": stats["pixels_run_fraction"],
        "executed_gflop": executed / 1e9,
        "gflops": executed / seconds / 1e9 if seconds > 0 else None,
        "network_gflops": executed / net_seconds / 1e9 if net_seconds > 0 else None,
    }
    return row, _threshold(out, sigmoid_output)


def measure_variant(spec: dict[str, Any]) -> dict[str, Any]:
    """Every measurement of one variant (see the module docstring); a JSON-ready dict."""
    from custom_modules.networks.complexity import FLOP_COUNTER, count_flops, count_parameters

    name = spec["name"]
    log = step_logger(name)
    device = torch.device(spec["device"])
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    threads = torch.get_num_threads()

    volume_np = np.load(spec["volume"])  # (C, H, W, D)
    calibration = np.load(spec["calibration"]).astype(np.float32)  # (N, C, H, W)
    volume = torch.from_numpy(volume_np).float()[None].to(device)
    height, width = volume.shape[2:4]

    net, info = build_network(spec, log)
    result: dict[str, Any] = {
        "name": name,
        **info,
        "device": str(device),
        "device_name": device_name(device),
        "threads": threads,
        "rows": [],
        "backend_errors": {},
    }
    # random weights, and pruned weights that were not fine-tuned (stale BatchNorm statistics, usually an empty
    # mask), get trained-like output statistics, so that the agreement column is not vacuous
    if (info["weights"] != "models/model.pt" or info.get("pruning")) and spec.get("calibrate_random", True):
        step = max(1, len(calibration) // 8)
        cal = torch.from_numpy(calibration[::step][:8])
        log(
            f"{'pruned' if info.get('pruning') else 'random'} weights: BatchNorm statistics and head bias "
            f"from {len(cal)} calibration slices"
        )
        result["random_weight_calibration"] = calibrate_random_weights(net, cal)
    net = net.to(device).eval()
    sigmoid_output = _sigmoid_output(net)
    result["params"] = count_parameters(net)
    result["flop_counter"] = FLOP_COUNTER
    result["flops_per_slice"] = count_flops(net, (1, volume.shape[1], height, width), device)
    result["slice_shape"] = [int(volume.shape[1]), int(height), int(width)]
    result["volume_shape"] = list(volume_np.shape)

    log(f"matmul reference: {spec['matmul_size']}x{spec['matmul_size']} float32, median of {spec['matmul_repeats']}")
    result["matmul"] = matmul_gflops(int(spec["matmul_size"]), int(spec["matmul_repeats"]), device)

    with tempfile.TemporaryDirectory(prefix="deploy_") as tmp_name:
        backends, result["backends"], result["backend_errors"] = _build_backends(
            net, spec, calibration, device, threads, Path(tmp_name), log
        )
        if "torch" not in backends:
            raise RuntimeError("the torch backend is required (its mask is the agreement reference)")

        brain = torch.nonzero((volume[0] != 0).flatten(0, 2).any(dim=0)).flatten()
        middle = int(brain[len(brain) // 2]) if len(brain) else volume.shape[-1] // 2
        x = volume[..., middle].contiguous()  # (1, C, H, W): a real brain slice
        slice_ms: dict[str, float] = {}
        slice_raw: dict[str, Any] = {}
        for backend, network in list(backends.items()):
            log(
                f"slice latency {backend}: batch 1 {tuple(x.shape)} "
                f"({spec['slice_warmup']} warm-up + {spec['slice_repeats']} timed)"
            )
            try:
                with torch.no_grad():
                    timing = time_repeats(
                        lambda: network(x), int(spec["slice_warmup"]), int(spec["slice_repeats"]), device
                    )
            except Exception as e:
                result["backend_errors"][backend] = f"{type(e).__name__}: {e}"[:500]
                log(f"backend {backend} failed: {result['backend_errors'][backend]}")
                backends.pop(backend)
                continue
            slice_ms[backend], slice_raw[backend] = timing["median_s"] * 1e3, timing
        result["slice_latency_ms"], result["slice_raw"] = slice_ms, slice_raw

        reference_mask: torch.Tensor | None = None

        def row(backend: str, option: str) -> None:
            nonlocal reference_mask
            log(f"volume {tuple(volume.shape[1:])} {backend} {option} ({spec['volume_repeats']} timed)")
            try:
                entry, mask = _volume_row(
                    backends[backend], backend, option, volume, spec, device, result["flops_per_slice"], sigmoid_output
                )
            except Exception as e:
                if backend == "torch" and option == "full":
                    raise
                result["backend_errors"][f"{backend}/{option}"] = f"{type(e).__name__}: {e}"[:500]
                log(f"{backend} {option} failed: {result['backend_errors'][f'{backend}/{option}']}")
                return
            if reference_mask is None:
                reference_mask = mask
            entry["slice_ms"] = slice_ms.get(backend)
            entry["providers"] = result["backends"].get(backend, {}).get("providers")
            entry["agreement"] = region_dice(mask, reference_mask)
            entry["mask_voxels"] = {
                REGIONS[c] if c < len(REGIONS) else str(c): int(mask[c].sum()) for c in range(mask.shape[0])
            }
            entry["gflops_fraction_of_matmul"] = (
                entry["gflops"] / result["matmul"]["gflops"] if entry["gflops"] and result["matmul"]["gflops"] else None
            )
            result["rows"].append(entry)
            log(
                f"  {entry['volume_s']:.2f} s, network {entry['network_fraction']:.0%}, agreement "
                + "/".join(f"{v:.3f}" for v in entry["agreement"].values())
            )

        for backend in ["torch"] + [b for b in backends if b != "torch"]:
            row(backend, "full")
        measured = {r["backend"] for r in result["rows"]}
        fastest = min((b for b in slice_ms if b in measured), key=slice_ms.get)
        result["fastest_backend"] = fastest
        for backend in dict.fromkeys(["torch", fastest]):
            for option in spec["options"]:
                if option != "full":
                    row(backend, option)
    log("done")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, required=True, help="variant spec written by benchmarks.deploy")
    parser.add_argument("--json", type=Path, required=True, help="where to write the result")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    if spec["device"] == "cuda" and not torch.cuda.is_available():
        print("--device cuda requested but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    try:
        result = measure_variant(spec)
    except Exception as e:
        traceback.print_exc()
        result = {"name": spec["name"], "error": f"{type(e).__name__}: {e}"[:1000]}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, result, indent=2)
    return 1 if result.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
