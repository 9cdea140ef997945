"""Ratios against the reference variant, Markdown tables and the ratio bar chart of a comparison run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from raagr2_tools.reports import format_value as _fmt
from raagr2_tools.reports import markdown_table, new_figure, save_figure

__all__ = ["RATIO_KEYS", "compute_ratios", "render_tables", "plot_ratios"]

#: quantities compared against the reference (variant value / reference value)
RATIO_KEYS: dict[str, str] = {
    "params": "params",
    "checkpoint_mib": "size",
    "flops_per_slice": "FLOPs",
    "latency_b1_ms": "b1 latency",
    "latency_batch_ms_per_slice": "b8 latency",
    "volume_latency_s": "volume latency",
    "train_step_s": "train step",
    "peak_memory_mib": "peak memory",
    "train_memory_mib": "train memory",
}


def _ratio(value: Any, reference: Any) -> float | None:
    if not isinstance(value, (int, float)) or not isinstance(reference, (int, float)) or reference <= 0:
        return None
    return float(value) / float(reference)


def compute_ratios(variants: Sequence[Mapping[str, Any]], reference: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{variant name: {quantity: variant / reference or None}}`` for every key of :data:`RATIO_KEYS`."""
    return {v["name"]: {k: _ratio(v.get(k), reference.get(k)) for k in RATIO_KEYS} for v in variants}


def render_tables(result: Mapping[str, Any]) -> str:
    """Two Markdown tables: raw quantities per variant, then ratios against the reference."""
    s = result["settings"]
    sl, b, tb = "x".join(str(i) for i in [s["in_channels"], *s["slice_size"]]), s["latency_batch"], s["train_batch"]
    vol = "x".join(str(i) for i in s["volume_shape"])
    mem = "peak RSS" if s["device"] == "cpu" else "peak CUDA alloc"
    train_mem = "train RSS increase" if s["device"] == "cpu" else "train CUDA peak"
    header = [
        "variant",
        "params",
        "size (MiB)",
        f"GFLOPs / {sl} slice",
        "GMACs / slice",
        "b1 latency (ms / slice)",
        f"b{b} latency (ms / slice)",
        f"volume {vol} (s)",
        f"train step b{tb} (s)",
        f"{mem} (MiB)",
        f"{train_mem} (MiB)",
        "threads",
    ]
    measured: list[list[str]] = []
    for v in result["variants"]:
        if v.get("error"):
            measured.append([v["name"], f"failed: {v['error']}"])
            continue
        measured.append(
            (
                [
                    v["name"],
                    _fmt(v["params"], ",d"),
                    _fmt(v["checkpoint_mib"], ".2f"),
                    _fmt(v["flops_per_slice"], ".2f", 1e-9),
                    _fmt(v["macs_per_slice"], ".2f", 1e-9),
                    _fmt(v["latency_b1_ms"], ".1f"),
                    _fmt(v["latency_batch_ms_per_slice"], ".1f"),
                    _fmt(v["volume_latency_s"], ".2f"),
                    _fmt(v["train_step_s"], ".2f"),
                    _fmt(v["peak_memory_mib"], ".0f"),
                    _fmt(v["train_memory_mib"], ".0f"),
                    str(v.get("threads", "n/a")),
                ]
            )
        )
    ratio_header = ["variant"] + [f"{label} ratio" for label in RATIO_KEYS.values()]
    ratio_rows = [[name] + [_fmt(ratios[k], ".3f") for k in RATIO_KEYS] for name, ratios in result["ratios"].items()]
    lines = [
        f"### Measurements ({result['machine']['device_name']}, {s['device']})",
        "",
        markdown_table(header, measured),
    ]
    lines += [
        f"### Ratios vs {result['reference']} (variant / reference)",
        "",
        markdown_table(ratio_header, ratio_rows),
    ]
    lines += [
        "",
        f"FLOPs: {result['flop_counter']} (2 FLOPs per multiply-add, MACs = FLOPs / 2; conv/matmul only), "
        f"batch 1, eval, no_grad. Latencies: medians of {s['repeats_b1']} (b1) / {s['repeats_batch']} (b{b}) "
        f"passes after {s['warmup_b1']} / {s['warmup_batch']} warm-ups; volume: median of {s['volume_repeats']} "
        f"after {s['volume_warmup']} warm-up; train step: median of {s['train_steps']} after {s['train_warmup']} "
        f"warm-up. Each variant ran in a fresh process.",
    ]
    return "\n".join(lines) + "\n"


def plot_ratios(result: Mapping[str, Any], path: str | Path) -> Path:
    """Bar chart of volume latency and parameter count per variant, relative to the reference; writes a PNG."""
    names = list(result["ratios"])
    by_name = {v["name"]: v for v in result["variants"]}
    series = (("volume_latency_s", "volume latency", "{:.3g} s"), ("params", "parameters", "{:.2f} M"))
    width = 0.38
    fig, ax = new_figure((max(5.0, 1.6 * len(names) + 2), 4))
    for i, (key, label, fmt) in enumerate(series):
        xs = [j + (i - 0.5) * width for j in range(len(names))]
        heights = [result["ratios"][n][key] or 0.0 for n in names]
        bars = ax.bar(xs, heights, width, label=label)
        for bar, name in zip(bars, names):
            value = by_name[name].get(key)
            text = "n/a" if value is None else fmt.format(value / 1e6 if key == "params" else value)
            top = (bar.get_x() + bar.get_width() / 2, bar.get_height())
            ax.annotate(text, top, ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(names)), names, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel(f"ratio vs {result['reference']}")
    ax.set_title(f"Volume latency and parameters ({result['settings']['device']}, {result['machine']['device_name']})")
    ax.legend(fontsize=8)
    return save_figure(fig, path)
