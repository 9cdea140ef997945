"""Deployment latency table: variant x backend x inference option on one real volume, in one run.

    python -m benchmarks.deploy [--bundles DIR ...] [--pruned-ratio 0.5] [--round-to 8]
                                [--out benchmarks/results/deploy_cpu.json] [--device cpu|cuda] [--threads N]
                                [--tiny] [--no-segresnet] [--volume-repeats 1] [--slice-repeats 10]

Every variant (the bundles, then the first bundle's network pruned one-shot) is measured in a fresh child
process (``python -m benchmarks.deploy_measure``), then MONAI SegResNet by ``benchmarks.measure``. Prints a
Markdown table and the target paragraph, writes the JSON (raw times, settings, machine, Markdown) and a PNG
bar chart with the same stem next to it. Columns, units and method: ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from custom_modules.constants import REGION_CHANNELS as REGIONS
from custom_modules.files import write_json
from raagr2_tools.reports import format_value as _fmt
from raagr2_tools.reports import markdown_table

from .compare import run_child, select_bundles, unique_names
from .deploy_measure import CPU_BACKENDS, CUDA_BACKENDS, OPTIONS
from .machine import REPO_ROOT, machine_description
from .settings import BenchSettings

__all__ = [
    "TARGET_SPEEDUP",
    "prepare_inputs",
    "variant_specs",
    "deploy",
    "target_summary",
    "render_markdown",
    "plot_volume_times",
    "main",
]

#: the issue's target: the fastest deployable variant segments a volume this many times faster than the baseline
TARGET_SPEEDUP = 15.0
#: the settings overlay of --tiny: a narrow RAAGR2-Net
TINY_CONFIG = Path(__file__).resolve().parent / "configs" / "tiny.json"
SEGRESNET_NAME = "SegResNet (brats_mri_segmentation)"


def _log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------------------------
# inputs


def _phantom_cases(shape: Sequence[int], count: int = 2) -> list[dict[str, Any]]:
    """Preprocessed phantom cases (z-scored inside the brain, zeros outside) in the ``load_cases`` format."""
    from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses, NormalizeIntensity

    from custom_modules.constants import MODALITY_ORDER
    from data_prep.synthetic import make_phantom_case

    cases = []
    for i in range(count):
        modalities, label = make_phantom_case(shape, np.random.default_rng([0, i]))
        image = np.stack([modalities[m] for m in MODALITY_ORDER])
        image = torch.as_tensor(NormalizeIntensity(nonzero=True, channel_wise=True)(image)).float()
        regions = torch.as_tensor(ConvertToMultiChannelBasedOnBratsClasses()(label[None])).bool()
        cases.append({"case_id": f"phantom_{i}", "image": image, "label": regions})
    return cases


def _tiny_cut(image: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``(C, H, W[, D])`` -> in-plane strided subsample zero-padded/cut to ``shape[:2]`` (keeps brain and
    background), and ``shape[2]`` slices spread over the depth when there is one."""
    stride = max(1, math.ceil(max(image.shape[1] / shape[0], image.shape[2] / shape[1])))
    small = image[:, ::stride, ::stride]
    if image.dim() == 4:
        index = np.unique(np.linspace(0, image.shape[-1] - 1, shape[2]).round().astype(int)).tolist()
        small = small[..., index]
    out = small.new_zeros((small.shape[0], shape[0], shape[1], *small.shape[3:]))
    h, w = min(shape[0], small.shape[1]), min(shape[1], small.shape[2])
    top, left = (shape[0] - h) // 2, (shape[1] - w) // 2
    out[:, top : top + h, left : left + w] = small[:, :h, :w]
    return out


def prepare_inputs(
    workdir: Path, data_dir: Path | None, bundle: Path, calibration_count: int, tiny_shape: Sequence[int] | None = None
) -> dict[str, Any]:
    """Write ``volume.npy`` (C, H, W, D) and ``calibration.npy`` (N, C, H, W) to ``workdir``; describe them.

    The volume is the first real case preprocessed by ``bundle``'s inference preprocessing; the INT8
    calibration (and random-weight calibration) slices come from the second case (the first when there is one
    case). Without the real cases: two phantoms from ``data_prep.synthetic`` at 240x240x155. ``tiny_shape``
    (H, W, D) cuts both down for ``--tiny``.
    """
    from raagr2_tools.shipping.cases import load_cases, sample_slices

    note = None
    cases: list[dict[str, Any]] = []
    if data_dir is None:
        note = "no --data given; phantoms used"
    elif data_dir.is_dir():
        try:
            from data_prep.prepare import prepare_datalist

            prepare_datalist(data_dir, workdir / "datalist.json", all_test=True)
            cases = list(load_cases(bundle, data_dir, workdir / "datalist.json", "test", 2))
        except Exception as e:  # unreadable data: fall back to phantoms, and say so
            note = f"real cases at {data_dir} could not be loaded ({type(e).__name__}: {e}); phantoms used"
    else:
        note = f"real cases not found at {data_dir}; phantoms used"
    source = "real"
    if not cases:
        source, cases = "phantom", _phantom_cases((240, 240, 155))
    volume_case = cases[0]
    calibration_cases = cases[1:] or cases[:1]
    slices, where = sample_slices(calibration_cases, calibration_count, tumour_fraction=0.5)
    volume = volume_case["image"].as_tensor() if hasattr(volume_case["image"], "as_tensor") else volume_case["image"]
    volume = torch.as_tensor(volume).float()
    original_shape = list(volume.shape)
    calibration = np.stack(slices).astype(np.float32)
    if tiny_shape is not None:
        volume = _tiny_cut(volume, tiny_shape)
        calibration = np.stack([_tiny_cut(torch.from_numpy(s), tiny_shape).numpy() for s in calibration])
    np.save(workdir / "volume.npy", volume.numpy())
    np.save(workdir / "calibration.npy", calibration)
    brain = (volume != 0).any(dim=0)
    brain_slices = int(brain.flatten(0, 1).any(dim=0).sum())
    return {
        "source": source,
        "note": note,
        "case": Path(str(volume_case["case_id"])).name,
        "calibration_cases": [Path(str(c["case_id"])).name for c in calibration_cases],
        "calibration_slices": len(calibration),
        "calibration_tumour_slices": sum(bool(w["tumour"]) for w in where),
        "original_shape": original_shape,
        "shape": list(volume.shape),
        "tiny_cut": tiny_shape is not None,
        "brain_slices": brain_slices,
        "slices": int(volume.shape[-1]),
        "brain_voxel_fraction": float(brain.float().mean()),
        "volume_file": str(workdir / "volume.npy"),
        "calibration_file": str(workdir / "calibration.npy"),
    }


# --------------------------------------------------------------------------------------------------------------
# children


def variant_specs(bundles: Sequence[Path], args: argparse.Namespace, inputs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One child spec per variant: each bundle, then the first bundle pruned by ``--pruned-ratio`` (if > 0)."""
    common = {
        "device": args.device,
        "threads": args.threads,
        "seed": args.seed,
        "volume": inputs["volume_file"],
        "calibration": inputs["calibration_file"],
        "backends": list(args.backends),
        "options": list(OPTIONS),
        "sw_batch_size": args.sw_batch_size,
        "slice_warmup": args.slice_warmup,
        "slice_repeats": args.slice_repeats,
        "volume_repeats": args.volume_repeats,
        "matmul_size": args.matmul_size,
        "matmul_repeats": args.matmul_repeats,
        "onnx_exporter": args.onnx_exporter,
        "opset": args.opset,
        "overrides": json.loads(TINY_CONFIG.read_text()) if args.tiny else {},
    }
    specs = [{**common, "name": name, "bundle": str(b)} for b, name in zip(bundles, unique_names(list(bundles)))]
    if args.pruned_ratio > 0:
        prune = {"ratio": args.pruned_ratio, "round_to": args.round_to, "criterion": args.prune_criterion}
        specs.append(
            {
                **common,
                "name": f"pruned{int(round(args.pruned_ratio * 100))}",
                "bundle": str(bundles[0]),
                "prune": prune,
            }
        )
    return specs


def _run_variant(spec: Mapping[str, Any], workdir: Path) -> dict[str, Any]:
    """``python -m benchmarks.deploy_measure`` for ``spec`` in a fresh process; its JSON (or an ``error``)."""
    stem = workdir / f"variant_{len(list(workdir.glob('variant_*.spec.json')))}"
    spec_path, out = stem.with_suffix(".spec.json"), stem.with_suffix(".json")
    spec_path.write_text(json.dumps(spec, indent=2))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "benchmarks.deploy_measure", "--spec", str(spec_path), "--json", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, check=False)
    wall = time.perf_counter() - start
    if not out.is_file():
        _log(f"  [{spec['name']}] FAILED (exit code {proc.returncode})")
        return {"name": spec["name"], "error": f"exit code {proc.returncode}", "child_wall_s": wall}
    result = json.loads(out.read_text())
    if result.get("error"):
        _log(f"  [{spec['name']}] FAILED: {result['error']}")
    result["child_wall_s"] = wall
    return result


def _segresnet(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The SegResNet peer timed by ``benchmarks.measure --segresnet`` (its own volume settings), fresh process."""
    overrides = {"device": args.device, "threads": args.threads, "seed": args.seed}
    settings = (
        BenchSettings.tiny_preset(**overrides)
        if args.tiny
        else BenchSettings(**overrides, volume_repeats=args.volume_repeats)
    )
    folder = workdir / "segresnet"
    folder.mkdir(exist_ok=True)
    return run_child(["--segresnet"], settings, folder, SEGRESNET_NAME)


# --------------------------------------------------------------------------------------------------------------
# table and target


def flatten_rows(
    variants: Sequence[Mapping[str, Any]], reference_s: float | None, segresnet_s: float | None
) -> list[dict[str, Any]]:
    rows = []
    for v in variants:
        if v.get("error"):
            continue
        # agreement with an empty reference mask is vacuous (1.0 for any empty mask): only non-empty regions count
        reference = next((r for r in v["rows"] if r["backend"] == "torch" and r["option"] == "full"), None)
        counted = [k for k, n in (reference or {}).get("mask_voxels", {}).items() if n > 0]
        for r in v["rows"]:
            row = {"variant": v["name"], "params": v["params"], "flops_per_slice": v["flops_per_slice"], **r}
            row["speedup"] = reference_s / r["volume_s"] if reference_s and r["volume_s"] > 0 else None
            row["vs_segresnet"] = segresnet_s / r["volume_s"] if segresnet_s and r["volume_s"] > 0 else None
            row["agreement_regions"] = counted
            row["min_agreement"] = min((r["agreement"][k] for k in counted), default=None)
            row["matmul_gflops"] = v["matmul"]["gflops"]
            rows.append(row)
    return rows


def _num(value: Any) -> str:
    """Seconds or milliseconds: 2 decimals from 1 up, 3 significant digits below (tiny mode)."""
    return _fmt(value, ".2f" if isinstance(value, (int, float)) and abs(value) >= 1 else ".3g")


def _row_name(row: Mapping[str, Any]) -> str:
    return f"{row['variant']} / {row['backend']} / {row['option']}"


def target_summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """The fastest deployable row (mask agreement >= threshold on every region) against the target, and what
    limits it, computed from the measurements; ``text`` is the paragraph printed under the table."""
    rows, target, threshold = (
        result["rows"],
        result["settings"]["target_speedup"],
        result["settings"]["agreement_threshold"],
    )
    reference_s, segresnet_s = result["reference_volume_s"], result["segresnet_volume_s"]
    cores = result["machine"].get("cpu_cores_usable")
    where = f"{result['settings']['device']}, {cores} usable cores, {result['threads']} threads"
    summary: dict[str, Any] = {
        "target_speedup": target,
        "agreement_threshold": threshold,
        "reference": result["reference"],
    }
    if not rows or not reference_s:
        summary["text"] = f"**Target ({target:g}x):** not evaluated: the reference variant's torch full row is missing."
        return summary
    budget = reference_s / target
    deployable = [r for r in rows if r["min_agreement"] is not None and r["min_agreement"] >= threshold]
    fastest = min(rows, key=lambda r: r["volume_s"])
    summary.update(budget_s=budget, reference_s=reference_s, segresnet_s=segresnet_s, fastest_row=_row_name(fastest))
    lines = [
        f"**Target** ({where}): the fastest deployable variant segments the "
        f"{'x'.join(map(str, result['input']['shape'][1:]))} "
        f"volume >= {target:g}x faster than {result['reference']} torch FP32 full ({reference_s:.3g} s here, so "
        f"<= {budget:.3g} s) and faster than SegResNet"
        + (f" ({segresnet_s:.3g} s here)" if segresnet_s else " (not measured in this run)")
        + ", with per-region Dice within 1 point of the baseline."
    ]
    if not deployable:
        lines.append(
            f"No row reaches mask agreement >= {threshold:g} on TC, WT and ET; the fastest row is "
            f"{_row_name(fastest)} ({fastest['volume_s']:.3g} s, {fastest['speedup']:.2f}x)."
        )
        summary["text"] = "\n".join(lines)
        return summary
    best = min(deployable, key=lambda r: r["volume_s"])
    t, speedup = best["volume_s"], best["speedup"]
    met_speed = speedup >= target
    met_peer = segresnet_s is not None and t < segresnet_s
    summary.update(
        best_row=_row_name(best),
        best_volume_s=t,
        best_speedup=speedup,
        meets_speedup=met_speed,
        beats_segresnet=met_peer if segresnet_s else None,
    )
    peer = (
        f"{segresnet_s / t:.2f}x SegResNet's speed ({'faster' if met_peer else 'slower'} than its {segresnet_s:.3g} s)"
        if segresnet_s
        else "SegResNet not measured"
    )
    lines.append(
        f"Fastest row with mask agreement >= {threshold:g} on TC/WT/ET: **{_row_name(best)}**, {t:.3g} s: "
        f"**{speedup:.2f}x** ({speedup / target:.0%} of the {target:g}x target"
        + ("" if met_speed else f"; it must get {t / budget:.2f}x faster still")
        + f"), {peer}. Speed target {'met' if met_speed else '**not met**'}; SegResNet "
        + ("beaten." if met_peer else ("**not beaten**." if segresnet_s else "not compared."))
    )
    if fastest is not best:
        lines.append(
            f"(Fastest row overall: {_row_name(fastest)}, {fastest['volume_s']:.3g} s = "
            f"{fastest['speedup']:.2f}x, min. agreement "
            + (
                f"{fastest['min_agreement']:.3f}, below the threshold.)"
                if fastest["min_agreement"] is not None
                else "undefined: its variant's reference mask is empty.)"
            )
        )
    matmul = best["matmul_gflops"]
    gflop, rate = best["executed_gflop"], best["gflops"]
    outside = t - best["network_s"]
    need = rate * budget if rate else 0.0
    limit = (
        f"What limits it: {best['network_fraction']:.0%} of its time is in the network ({outside:.3g} s outside it: "
        f"slicing, cropping, pasting, copies); it runs {best['slices_run']} of {best['slices']} slices and "
        f"{best['pixels_run_fraction']:.0%} of the volume's pixels, {gflop:.3g} GFLOP per volume, "
        f"at {rate:.3g} GFLOP/s "
        f"= {best['gflops_fraction_of_matmul']:.0%} of the {matmul:.3g} GFLOP/s of a {result['matmul']['n']}x"
        f"{result['matmul']['n']} float32 matmul measured in the same process"
    )
    if need > 0 and not met_speed:
        limit += f". At that rate {target:g}x needs <= {need:.3g} GFLOP per volume ({gflop / need:.2f}x fewer than now)"
        if outside > 0.25 * budget:
            limit += f"; the time outside the network alone is {outside / budget:.0%} of the {budget:.3g} s budget"
        at_peak = gflop / matmul if matmul else float("nan")
        if at_peak > budget:
            limit += (
                f"; even at the matmul rate its FLOPs would take {at_peak:.3g} s > {budget:.3g} s, so it is bound "
                f"by the FLOPs it executes (fewer channels or pixels are needed, not only faster kernels)."
            )
        else:
            limit += (
                f"; at the matmul rate its FLOPs would take {at_peak:.3g} s <= {budget:.3g} s, so it is bound by "
                f"kernel efficiency ({rate / matmul:.0%} of the matmul rate) more than by its FLOP count."
            )
    else:
        limit += "."
    lines.append(limit)
    random = [v["name"] for v in result["variants"] if not v.get("error") and v.get("weights") != "models/model.pt"]
    recalibrated = [
        v["name"]
        for v in result["variants"]
        if not v.get("error") and v.get("pruning") and v.get("random_weight_calibration") and v["name"] not in random
    ]
    trained = [
        v["name"]
        for v in result["variants"]
        if not v.get("error") and v.get("weights") == "models/model.pt" and v["name"] not in recalibrated
    ]
    parts = []
    if trained:
        parts.append(f"{', '.join(trained)}: weights from its models/model.pt")
    if recalibrated:
        parts.append(
            f"{', '.join(recalibrated)}: pruned without fine-tuning, BatchNorm statistics and head bias "
            "re-estimated on calibration slices (its own reference mask)"
        )
    if random:
        parts.append(
            f"{', '.join(random)}: random weights calibrated to trained-like output statistics, which makes "
            "its INT8 and crop agreement pessimistic (small logit margins around the threshold)"
        )
    accuracy = (
        "Dice against ground truth is not measured here (" + "; ".join(parts) + "). The agreement column says "
        "what a backend or option changes in a variant's masks; the 1-point Dice condition for the variants "
        "themselves must come from the compression study."
    )
    lines.append(accuracy)
    summary["text"] = "\n".join(lines)
    return summary


def render_markdown(result: Mapping[str, Any]) -> str:
    """The deployment table (one line per variant x backend x option, then SegResNet), notes and target."""
    inp, s = result["input"], result["settings"]
    shape = "x".join(str(i) for i in inp["shape"][1:])
    slice_shape = "x".join(str(i) for i in [inp["shape"][0], *inp["shape"][1:3]])
    header = [
        "variant",
        "backend",
        "option",
        "params",
        f"GFLOPs / {slice_shape} slice",
        "slice b1 (ms)",
        f"volume {shape} (s)",
        f"speed-up vs {result['reference']} torch full",
        "speed-up vs SegResNet",
        "slices run",
        "pixels run",
        "in network",
        "GFLOP/s",
        "of matmul",
        "Dice TC / WT / ET vs torch full",
    ]
    table: list[list[str]] = []
    for v in result["variants"]:
        if v.get("error"):
            table.append([v["name"], f"failed: {v['error']}"])
    for r in result["rows"]:
        table.append(
            [
                r["variant"],
                r["backend"],
                r["option"],
                _fmt(r["params"], ",d"),
                _fmt(r["flops_per_slice"], ".2f", 1e-9),
                _num(r["slice_ms"]),
                _num(r["volume_s"]),
                _fmt(r["speedup"], ".2f") + "x",
                _fmt(r["vs_segresnet"], ".2f") + ("x" if r["vs_segresnet"] else ""),
                f"{r['slices_run']}/{r['slices']}",
                _fmt(r["pixels_run_fraction"] * 100, ".0f") + " %",
                _fmt((r["network_fraction"] or 0) * 100, ".0f") + " %",
                _fmt(r["gflops"], ".1f"),
                _fmt((r["gflops_fraction_of_matmul"] or 0) * 100, ".0f") + " %",
                " / ".join(
                    _fmt(r["agreement"].get(k), ".3f") if k in r["agreement_regions"] else "n/a (empty)"
                    for k in REGIONS
                ),
            ]
        )
    peer = result.get("segresnet")
    if peer and not peer.get("error"):
        inferer = peer["raw"]["volume"]["inferer"]
        speedup = result["reference_volume_s"] / peer["volume_latency_s"] if result["reference_volume_s"] else None
        table.append(
            [
                SEGRESNET_NAME,
                "torch",
                f"3-D sliding window {tuple(inferer['roi_size'])}, overlap {inferer['overlap']}",
                _fmt(peer["params"], ",d"),
                "n/a",
                "n/a",
                _num(peer["volume_latency_s"]),
                _fmt(speedup, ".2f") + "x",
                "1.00x",
                "n/a",
                "n/a",
                "n/a",
                "n/a",
                "n/a",
                "n/a",
            ]
        )
    elif peer:
        table.append([SEGRESNET_NAME, f"failed: {peer['error']}"])
    lines = [
        f"### Deployment latency ({result['machine']['device_name']}, {s['device']}, {result['threads']} threads)",
        "",
        markdown_table(header, table).rstrip("\n"),
    ]
    mm = result["matmul"]
    source = (f"real case {inp['case']}" if inp["source"] == "real" else "phantom (data_prep.synthetic)") + (
        f", cut to {shape} for --tiny" if inp["tiny_cut"] else ""
    )
    notes = [
        "",
        f"Input: {source}, {inp['shape'][0]}x{shape}, {inp['brain_slices']} of {inp['slices']} slices with brain, "
        f"{inp['brain_voxel_fraction']:.1%} brain voxels" + (f" ({inp['note']})" if inp["note"] else "") + ". "
        f"INT8 and random-weight calibration: {inp['calibration_slices']} slices of "
        f"{', '.join(inp['calibration_cases'])}.",
        f"Slice b1: median of {s['slice_repeats']} batch-1 passes on a real brain slice after {s['slice_warmup']} "
        f"warm-up pass(es). Volume: `BrainSliceInferer`, sw_batch_size {s['sw_batch_size']}, "
        f"median of {s['volume_repeats']} "
        f"after a warm-up on a few brain slices. Options: full = every slice, whole grid (SliceInferer); skip = "
        f"slices without brain not run; skip+crop = each slice cropped to its brain box (+8 px, grown to multiples "
        f"of 16) and pasted back (cropping implies skipping). Options are measured with torch and each variant's "
        f"fastest backend by slice latency.",
        f"GFLOP/s: counted FLOPs of a full slice x slices x fraction of pixels run / volume time (approximate for "
        f"crop: FLOPs taken proportional to pixels; INT8 rows count the FP32-equivalent FLOPs). Matmul reference: "
        f"torch.mm of two {mm['n']}x{mm['n']} float32 matrices, {mm['gflops']:.1f} GFLOP/s (median over the variant "
        f"processes; each row uses its own process's value). Dice: per-region Dice of the row's mask (sigmoid > 0.5) "
        f"vs the same variant's torch full mask.",
        "",
        result["target"]["text"],
    ]
    return "\n".join(lines + notes) + "\n"


def plot_volume_times(result: Mapping[str, Any], path: str | Path) -> Path:
    """Horizontal bars of volume seconds per row (sorted, log x), with the target budget and SegResNet."""
    from matplotlib.patches import Patch

    from raagr2_tools.reports import new_figure, save_figure

    rows = sorted(result["rows"], key=lambda r: r["volume_s"], reverse=True)
    labels = [_row_name(r) for r in rows]
    values = [r["volume_s"] for r in rows]
    colours = {b: f"C{i}" for i, b in enumerate(CUDA_BACKENDS)}
    threshold = result["settings"]["agreement_threshold"]
    peer = result.get("segresnet_volume_s")
    fig, ax = new_figure((8, max(3.0, 0.32 * len(rows) + 1.5)))
    bars = ax.barh(range(len(rows)), values, color=[colours.get(r["backend"], "grey") for r in rows])
    for bar, r in zip(bars, rows):
        if r["min_agreement"] is None or r["min_agreement"] < threshold:
            bar.set_hatch("//")
    for i, value in enumerate(values):
        ax.annotate(f"{value:.3g} s", (value, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    handles = [Patch(color=colours[b], label=b) for b in dict.fromkeys(r["backend"] for r in rows) if b in colours]
    if any(r["min_agreement"] is None or r["min_agreement"] < threshold for r in rows):
        handles.append(
            Patch(facecolor="white", edgecolor="black", hatch="//", label=f"Dice vs torch full < {threshold:g}")
        )
    if result.get("reference_volume_s"):
        budget = result["reference_volume_s"] / result["settings"]["target_speedup"]
        handles.append(
            ax.axvline(
                budget,
                color="red",
                linestyle="--",
                linewidth=1,
                label=f"{result['settings']['target_speedup']:g}x target ({budget:.3g} s)",
            )
        )
    if peer:
        handles.append(ax.axvline(peer, color="black", linestyle=":", linewidth=1, label=f"SegResNet ({peer:.3g} s)"))
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("seconds per volume (log)")
    ax.set_title(
        f"Volume latency ({result['settings']['device']}, {result['machine']['device_name']}, "
        f"{result['threads']} threads)",
        fontsize=9,
    )
    lines = [h.get_xdata()[0] for h in handles if hasattr(h, "get_xdata")]
    ax.set_xlim(min(values + lines) / 1.5, max(values + lines) * 2.5)  # room for the labels on the right
    ax.legend(handles=handles, fontsize=7, loc="upper right")
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------------------------
# run


def deploy(bundles: Sequence[Path], args: argparse.Namespace) -> dict[str, Any]:
    """Prepare the inputs, measure every variant and SegResNet (fresh processes), assemble the result."""
    start = time.perf_counter()
    tiny_shape = BenchSettings.tiny_preset().volume_shape if args.tiny else None
    with tempfile.TemporaryDirectory(prefix="deploy_bench_") as tmp_name:
        tmp = Path(tmp_name)
        _log(f"inputs: {args.data or 'phantoms'} (first case timed, second calibrates)")
        inputs = prepare_inputs(tmp, args.data, bundles[0], args.calibration_slices, tiny_shape)
        if inputs["note"]:
            _log(f"note: {inputs['note']}")
        specs = variant_specs(bundles, args, inputs)
        total = len(specs) + int(not args.no_segresnet)
        variants = []
        for i, spec in enumerate(specs, start=1):
            what = f"pruned {spec['prune']['ratio']:.0%} from {spec['bundle']}" if spec.get("prune") else spec["bundle"]
            _log(f"[{i}/{total}] {spec['name']}: fresh process ({what})")
            variants.append(_run_variant(spec, tmp))
        segresnet = None
        if not args.no_segresnet:
            _log(f"[{total}/{total}] {SEGRESNET_NAME}: fresh process (benchmarks.measure --segresnet)")
            segresnet = _segresnet(args, tmp)
    for key in ("volume_file", "calibration_file"):
        inputs.pop(key)

    reference = variants[0]
    reference_s = None
    if not reference.get("error"):
        reference_s = next(
            (r["volume_s"] for r in reference["rows"] if r["backend"] == "torch" and r["option"] == "full"), None
        )
    segresnet_s = segresnet["volume_latency_s"] if segresnet and not segresnet.get("error") else None
    matmuls = [v["matmul"]["gflops"] for v in variants if not v.get("error")]
    ok = [v for v in variants if not v.get("error")]
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "bundles"}
    result: dict[str, Any] = {
        "benchmark": "benchmarks.deploy",
        "reference": reference["name"],
        "settings": settings,
        "machine": machine_description(args.device),
        "threads": ok[0]["threads"] if ok else torch.get_num_threads(),
        "input": inputs,
        "matmul": {
            "n": args.matmul_size,
            "gflops": statistics.median(matmuls) if matmuls else None,
            "per_variant": {v["name"]: v["matmul"]["gflops"] for v in ok},
        },
        "reference_volume_s": reference_s,
        "segresnet_volume_s": segresnet_s,
        "variants": variants,
        "segresnet": segresnet,
        "rows": flatten_rows(variants, reference_s, segresnet_s),
    }
    result["target"] = target_summary(result)
    result["wall_time_s"] = time.perf_counter() - start
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--bundles",
        type=Path,
        nargs="+",
        default=None,
        help="bundle folders; the first is the reference (default: baseline and shared depthwise)",
    )
    parser.add_argument(
        "--pruned-ratio",
        type=float,
        default=0.5,
        help="also measure the first bundle's network with this channel ratio pruned (0: no)",
    )
    parser.add_argument("--round-to", type=int, default=8, help="pruned channel counts are multiples of this (0: any)")
    parser.add_argument("--prune-criterion", default="depgraph", help="pruning criterion (needs no data)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="result JSON (default benchmarks/results/deploy_<device>.json); PNG next to it",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads and ONNX Runtime intra_op_num_threads in every child",
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        default=None,
        help=f"backends (default cpu: {' '.join(CPU_BACKENDS)}; cuda adds ort_cuda_fp16 ort_trt_fp16)",
    )
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke mode (tests); numbers mean nothing")
    parser.add_argument("--no-segresnet", action="store_true", help="skip the SegResNet peer")
    parser.add_argument("--data", type=Path, default=None, help="folder of real BraTS-style cases (default: a phantom)")
    parser.add_argument("--volume-repeats", type=int, default=1, help="timed volumes per row (median)")
    parser.add_argument("--slice-repeats", type=int, default=None, help="timed batch-1 slices (default 10, tiny 2)")
    parser.add_argument("--slice-warmup", type=int, default=None, help="warm-up batch-1 slices (default 3, tiny 1)")
    parser.add_argument("--sw-batch-size", type=int, default=8, help="slices per network call in the volume")
    parser.add_argument("--calibration-slices", type=int, default=None, help="INT8 calibration slices (32, tiny 4)")
    parser.add_argument("--matmul-size", type=int, default=None, help="matmul reference size n (2048, tiny 256)")
    parser.add_argument("--matmul-repeats", type=int, default=5, help="timed matmuls (median)")
    parser.add_argument(
        "--onnx-exporter",
        choices=("dynamo", "legacy"),
        default=None,
        help="dynamo = raagr2_tools.shipping.export_onnx, as shipped (default); legacy = "
        "torch.onnx.export(dynamo=False), default for --tiny (seconds instead of tens of seconds)",
    )
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument(
        "--agreement-threshold",
        type=float,
        default=0.99,
        help="a row is deployable when its Dice vs torch full is >= this on TC, WT and ET",
    )
    parser.add_argument("--target-speedup", type=float, default=TARGET_SPEEDUP)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    defaults = {
        "slice_repeats": (10, 2),
        "slice_warmup": (3, 1),
        "calibration_slices": (32, 4),
        "matmul_size": (2048, 256),
        "onnx_exporter": ("dynamo", "legacy"),
    }
    for key, (full, tiny) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, tiny if args.tiny else full)
    if args.backends is None:
        args.backends = list(CUDA_BACKENDS if args.device == "cuda" else CPU_BACKENDS)
    unknown = [b for b in args.backends if b not in CUDA_BACKENDS]
    if unknown or "torch" not in args.backends:
        parser.error(f"--backends must include torch and be among {CUDA_BACKENDS}; got {args.backends}")
    for key in ("volume_repeats", "slice_repeats", "matmul_repeats", "sw_batch_size", "calibration_slices"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1")
    if not 0 <= args.pruned_ratio < 1:
        parser.error("--pruned-ratio must be in [0, 1)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but torch.cuda.is_available() is False")
    out = args.out or REPO_ROOT / "benchmarks" / "results" / f"deploy_{args.device}.json"

    bundles = select_bundles(args.bundles, parser)

    mode = "tiny" if args.tiny else "default"
    _log(
        f"deployment benchmark ({mode} mode, {args.device}): {len(bundles)} bundle(s)"
        + (f" + pruned{int(round(args.pruned_ratio * 100))}" if args.pruned_ratio > 0 else "")
        + ("" if args.no_segresnet else " + SegResNet")
        + f"; backends {' '.join(args.backends)}"
    )
    result = deploy(bundles, args)
    result["markdown"] = render_markdown(result)
    print()
    print(result["markdown"], flush=True)

    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result, indent=2)
    png = plot_volume_times(result, out.with_suffix(".png")) if result["rows"] else None
    _log(f"wrote {out}" + (f" and {png}" if png else "") + f" (total {result['wall_time_s']:.0f} s)")
    failed = any(v.get("error") for v in result["variants"]) or bool(
        result["segresnet"] and result["segresnet"].get("error")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
