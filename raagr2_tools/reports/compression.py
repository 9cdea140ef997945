"""The per-run compression report: teacher vs pruned model size, cost and per-region quality (JSON, Markdown, PNG).

The report is a plain dict written by the compression workflow (keys marked optional may be absent)::

    {
        "bundle": str, "method": str, "criterion_reference": str, "ratio": float, "schedule": str,
        "allocation": str, "variant": str, "teacher": str,
        "flop_counter": str, "input_shape": [B, C, H, W],
        "complexity": {"teacher": {"params": int, "nonzero_params": int, "flops": int}, "pruned": {...}},
        "latency_ms": {"teacher": float, "pruned": float, "threads": int},                       # optional
        "layers": [{"name": str, "type": str, "teacher_out_channels": int, "kept_out_channels": int}],
        "eval_split": str, "cases": [str],
        "dice": {"teacher": {"wt", "tc", "et"}, "pruned_before_finetune": {...}, "finetuned": {...}},
        "hd95": {...same keys, values in mm},
        "steps": [{"step": int, "target_ratio": float, "layers": "all" | [str], "params": int, "flops": int,
                   "onnx_max_abs_diff": float}],
        "snip": {"sparsity": float, "masked_weights": int, "zeros_before_finetune": int,
                 "zeros_after_finetune": int},                                                  # optional
        "finetune": {"epochs_per_step": int, "distillation": bool, "alpha": float, "temperature": float,
                     "feature_weight": float},
    }

Missing values, ``None`` and NaN are shown as ``n/a``. FLOPs are reported as GFLOPs (``flops / 1e9``); Dice
differences as Dice points (100 x difference of Dice in [0, 1]).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from custom_modules.constants import REGION_DISPLAY_ORDER as REGIONS
from custom_modules.files import write_text_atomic

from .figures import new_figure, save_figure
from .tables import format_value, markdown_table, quantity_table

__all__ = [
    "STAGES",
    "dice_delta_points",
    "plot_allocation_search",
    "plot_compression",
    "render_compression_markdown",
    "write_compression_report",
]

#: evaluation stages of the report's ``dice`` / ``hd95`` entries and their table labels
STAGES = {
    "teacher": "teacher",
    "pruned_before_finetune": "pruned, before fine-tune",
    "finetuned": "pruned, after fine-tune",
}
NA = "n/a"


def _float(value: Any) -> float:
    """``value`` as a float; NaN for ``None``, non-numbers and non-finite values."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return out if math.isfinite(out) else float("nan")


def _fmt(value: Any, spec: str) -> str:
    return format_value(_float(value), spec)


def _int(value: Any) -> str:
    v = _float(value)
    return NA if math.isnan(v) else f"{int(round(v)):,}"


def _ratio_pct(num: Any, den: Any) -> str:
    n, d = _float(num), _float(den)
    return NA if math.isnan(n) or math.isnan(d) or d == 0 else f"{100.0 * n / d:.1f} %"


def _get(report: Mapping[str, Any], *keys: str) -> Any:
    """Nested lookup, ``None`` where any level is missing."""
    node: Any = report
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def dice_delta_points(report: Mapping[str, Any], stage: str = "finetuned") -> dict[str, float]:
    """``100 * (Dice[stage] - Dice[teacher])`` per region (Dice points; NaN where either is missing)."""
    teacher = {r: _float(_get(report, "dice", "teacher", r)) for r in REGIONS}
    return {r: 100.0 * (_float(_get(report, "dice", stage, r)) - teacher[r]) for r in REGIONS}


def _settings(report: Mapping[str, Any]) -> str:
    method = str(report.get("method", NA))
    if report.get("criterion_reference"):
        method += f" ({report['criterion_reference']})"
    teacher = report.get("teacher")
    rows = [
        ("method", method),
        ("pruning ratio", _fmt(report.get("ratio"), ".2f")),
        ("schedule", str(report.get("schedule", NA))),
        ("allocation", str(report.get("allocation", NA))),
    ]
    matched = report.get("matched_global")
    if isinstance(matched, Mapping):
        uniform = _fmt(matched.get("uniform_ratio"), "g")
        value = f"{_fmt(matched.get('ratio'), '.4f')} (the uniform allocation's MACs at {uniform})"
        rows.append(("global ratio at equal MACs", value))
    rows += [
        ("variant", str(report.get("variant", NA))),
        ("teacher checkpoint", f"`{teacher}`" if teacher else NA),
    ]
    finetune = report.get("finetune")
    if isinstance(finetune, Mapping):
        rows.append(("fine-tune epochs per step", _int(finetune.get("epochs_per_step"))))
        if finetune.get("distillation"):
            kd = (
                f"yes (alpha {_fmt(finetune.get('alpha'), 'g')}, T {_fmt(finetune.get('temperature'), 'g')}, "
                f"feature weight {_fmt(finetune.get('feature_weight'), 'g')})"
            )
        else:
            kd = "no"
        rows.append(("knowledge distillation", kd))
    return quantity_table(rows, "Settings")


def _complexity(report: Mapping[str, Any]) -> str:
    shape = report.get("input_shape")
    shape_text = " x ".join(str(s) for s in shape) if isinstance(shape, Sequence) and shape else NA
    lines = [
        "## Complexity",
        "",
        f"FLOPs counted with {report.get('flop_counter', NA)} on an input of shape {shape_text}; GFLOPs = FLOPs / 1e9.",
        "",
    ]
    rows = []
    for key, label, fmt in (("params", "parameters", _int), ("nonzero_params", "non-zero parameters", _int)):
        t, p = _get(report, "complexity", "teacher", key), _get(report, "complexity", "pruned", key)
        rows.append([label, fmt(t), fmt(p), _ratio_pct(p, t)])
    t, p = _get(report, "complexity", "teacher", "flops"), _get(report, "complexity", "pruned", "flops")
    rows.append(["GFLOPs", _fmt(_float(t) / 1e9, ".3f"), _fmt(_float(p) / 1e9, ".3f"), _ratio_pct(p, t)])
    latency = report.get("latency_ms")
    if isinstance(latency, Mapping):
        t, p = latency.get("teacher"), latency.get("pruned")
        threads = latency.get("threads")
        label = "CPU latency (ms)" + (f", {_int(threads)} threads" if threads is not None else "")
        rows.append([label, _fmt(t, ".2f"), _fmt(p, ".2f"), _ratio_pct(p, t)])
    lines.append(markdown_table(["quantity", "teacher", "pruned", "pruned / teacher"], rows))
    return "\n".join(lines)


def _regions(report: Mapping[str, Any]) -> str:
    cases = report.get("cases")
    n_cases = str(len(cases)) if isinstance(cases, Sequence) and not isinstance(cases, str) else NA
    lines = [
        "## Segmentation quality",
        "",
        f"Split `{report.get('eval_split', NA)}`, {n_cases} cases; Dice in [0, 1], HD95 in mm. "
        "Dice points = 100 x Dice difference.",
        "",
    ]
    header = ["stage"] + [f"{r.upper()} Dice" for r in REGIONS] + [f"{r.upper()} HD95 (mm)" for r in REGIONS]
    header.append("Δ vs teacher (Dice points)")
    stages = [s for s in STAGES if _get(report, "dice", s) is not None or _get(report, "hd95", s) is not None]
    rows = []
    for stage in stages:
        row = [STAGES[stage]]
        row += [_fmt(_get(report, "dice", stage, r), ".4f") for r in REGIONS]
        row += [_fmt(_get(report, "hd95", stage, r), ".2f") for r in REGIONS]
        if stage == "finetuned" and _get(report, "dice", "teacher") is not None:
            delta = dice_delta_points(report, stage)
            row.append(", ".join(f"{r.upper()} {_fmt(delta[r], '+.2f')}" for r in REGIONS))
        else:
            row.append("")
        rows.append(row)
    lines.append(markdown_table(header, rows) if rows else "No evaluation results.\n")
    return "\n".join(lines)


def _steps(report: Mapping[str, Any]) -> str:
    rows = []
    for step in report.get("steps") or []:
        layers = step.get("layers", NA)
        if isinstance(layers, Sequence) and not isinstance(layers, str):
            layers = ", ".join(str(x) for x in layers)
        rows.append(
            [
                str(step.get("step", NA)),
                _fmt(step.get("target_ratio"), ".3f"),
                str(layers),
                _int(step.get("params")),
                _fmt(_float(step.get("flops")) / 1e9, ".3f"),
                _fmt(step.get("onnx_max_abs_diff"), ".2e"),
            ]
        )
    header = ["step", "target ratio", "layers", "parameters", "GFLOPs", "ONNX max abs diff"]
    body = markdown_table(header, rows) if rows else "No steps recorded.\n"
    return "## Pruning steps\n\n" + body


def _layers(report: Mapping[str, Any]) -> str:
    rows = []
    for layer in report.get("layers") or []:
        t, k = layer.get("teacher_out_channels"), layer.get("kept_out_channels")
        rows.append([f"`{layer.get('name', NA)}`", str(layer.get("type", NA)), _int(t), _int(k), _ratio_pct(k, t)])
    body = markdown_table(["layer", "type", "teacher", "kept", "% kept"], rows) if rows else "No layers recorded.\n"
    return "## Output channels per layer\n\n" + body


def _snip(snip: Mapping[str, Any]) -> str:
    rows = [
        ("sparsity", _fmt(snip.get("sparsity"), ".3f")),
        ("masked weights", _int(snip.get("masked_weights"))),
        ("zero weights before fine-tune", _int(snip.get("zeros_before_finetune"))),
        ("zero weights after fine-tune", _int(snip.get("zeros_after_finetune"))),
    ]
    return quantity_table(rows, "SNIP (unstructured)")


def render_compression_markdown(report: Mapping[str, Any], figure: str | None = "compression_report.png") -> str:
    """The report as Markdown: settings, complexity, per-region quality, steps, per-layer channels, SNIP.

    Args:
        report: the report dict (module docstring); optional parts may be missing.
        figure: file name of the figure to link (relative to the Markdown file); ``None`` for no link.
    """
    parts = [f"# Compression report: {report.get('bundle', NA)}\n"]
    parts += [_settings(report), _complexity(report), _regions(report)]
    if figure:
        parts.append(f"![Dice per stage and relative model size]({figure})\n")
    parts += [_steps(report), _layers(report)]
    if isinstance(report.get("snip"), Mapping):
        parts.append(_snip(report["snip"]))
    if isinstance(report.get("allocation_search"), Mapping):
        parts.append(_allocation_search(report["allocation_search"], report.get("latency_check"), figure))
    return "\n".join(parts)


#: the search figure beside the report: ``<stem>_allocation_search.png``
SEARCH_FIGURE_SUFFIX = "_allocation_search.png"


def _allocation_search(search: Mapping[str, Any], latency: Mapping[str, Any] | None, figure: str | None) -> str:
    """The learned allocation: how it was searched, what it chose and (latency cost) how its latency came out."""
    samples = list(search.get("samples") or [])
    chosen = search.get("chosen") or {}
    cost = search.get("cost") or {}
    unit = str(cost.get("unit", ""))
    target = search.get("target") or {}
    rewards = [float(x["reward"]) for x in samples]
    rows = [
        ("search", str(search.get("method", NA))),
        (
            "cost held fixed",
            f"{cost.get('name', NA)} ({unit})" + (f", {cost['backend']}" if cost.get("backend") else ""),
        ),
        (
            "target",
            f"{_fmt(search.get('target_cost'), '.4g')} {unit}, the {target.get('allocation', 'uniform')} allocation at "
            f"ratio {_fmt(target.get('ratio'), '.3f')}",
        ),
        ("samples", _int(len(samples))),
        (
            "reward (teacher mask agreement), first / best",
            f"{_fmt(rewards[0] if rewards else None, '.4f')} / {_fmt(max(rewards) if rewards else None, '.4f')}",
        ),
        ("reward of the uniform allocation at the target", _fmt((search.get("reference") or {}).get("reward"), ".4f")),
        (
            "chosen",
            f"sample {int(chosen['index']) + 1}"
            if int(chosen.get("index", -1)) >= 0
            else "the uniform allocation (no sample beat it)",
        ),
        ("chosen cost / target", _fmt(_float(chosen.get("cost")) / _float(search.get("target_cost")), ".3f")),
    ]
    if isinstance(latency, Mapping):
        rows += [
            ("latency check: uniform allocation, measured", f"{_fmt(latency.get('target_ms_measured'), '.2f')} ms"),
            ("latency check: searched, measured", f"{_fmt(latency.get('searched_ms_measured'), '.2f')} ms"),
            (
                "latency check: searched, predicted by the table",
                f"{_fmt(latency.get('searched_ms_predicted'), '.2f')} ms",
            ),
            ("latency check: searched / target", _fmt(latency.get("searched_vs_target"), ".3f")),
        ]
    body = quantity_table(rows, "Learned layer-wise sparsity (rl)")
    if figure:
        stem = figure[: -len(".png")] if figure.endswith(".png") else figure
        body += f"\n![Search reward per sample and the chosen ratio per group]({stem}{SEARCH_FIGURE_SUFFIX})\n"
    ratios = chosen.get("ratios") or {}
    table = markdown_table(
        ["group (root conv)", "fraction of channels removed"],
        [[f"`{name}`", _fmt(value, ".3f")] for name, value in ratios.items()],
    )
    return body + "\nChosen ratio per Torch-Pruning group:\n\n" + table


def plot_compression(report: Mapping[str, Any], path: str | Path) -> Path:
    """Two panels: WT/TC/ET Dice per stage (grouped bars) and parameters / GFLOPs of the pruned model relative
    to the teacher (%); writes a PNG and returns its path."""
    fig, _ = new_figure((10, 4))
    fig.clear()
    ax_dice, ax_size = fig.subplots(1, 2)

    stages = [s for s in STAGES if _get(report, "dice", s) is not None]
    width = 0.8 / max(len(stages), 1)
    for i, stage in enumerate(stages):
        values = [_float(_get(report, "dice", stage, r)) for r in REGIONS]
        xs = [j + (i - (len(stages) - 1) / 2) * width for j in range(len(REGIONS))]
        ax_dice.bar(xs, [0.0 if math.isnan(v) else v for v in values], width, label=STAGES[stage])
    ax_dice.set_xticks(range(len(REGIONS)), [r.upper() for r in REGIONS])
    ax_dice.set_ylim(0, 1.2)
    ax_dice.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax_dice.set_ylabel("mean Dice")
    ax_dice.set_title(f"Dice ({report.get('eval_split', NA)} split)")
    ax_dice.grid(axis="y", alpha=0.3)
    if stages:
        ax_dice.legend(fontsize=7, loc="upper center", ncol=len(stages))

    quantities = (("params", "parameters"), ("flops", "GFLOPs"))
    rel = [
        100.0 * _float(_get(report, "complexity", "pruned", k)) / _float(_get(report, "complexity", "teacher", k))
        if _float(_get(report, "complexity", "teacher", k))
        else float("nan")
        for k, _ in quantities
    ]
    xs = list(range(len(quantities)))
    ax_size.bar([x - 0.2 for x in xs], [100.0] * len(xs), 0.4, label="teacher")
    bars = ax_size.bar([x + 0.2 for x in xs], [0.0 if math.isnan(v) else v for v in rel], 0.4, label="pruned")
    ax_size.bar_label(bars, labels=[NA if math.isnan(v) else f"{v:.1f} %" for v in rel], fontsize=8)
    ax_size.set_xticks(xs, [label for _, label in quantities])
    ax_size.set_ylim(0, 115)
    ax_size.set_ylabel("% of teacher")
    ax_size.set_title(f"Model size and cost ({report.get('method', NA)}, ratio {_fmt(report.get('ratio'), '.2f')})")
    ax_size.grid(axis="y", alpha=0.3)
    ax_size.legend(fontsize=8, loc="upper right")
    fig.suptitle(str(report.get("bundle", "")))
    return save_figure(fig, path)


def _jsonable(value: Any) -> Any:
    """JSON-ready copy: NaN/inf become ``None``, tuples lists, paths and other objects strings."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return _jsonable(value.tolist())
    return str(value)


def write_compression_report(
    report: Mapping[str, Any], out_dir: str | Path, stem: str = "compression_report"
) -> dict[str, Path]:
    """Write ``<stem>.json`` (the report, indent 4, NaN as ``null``), ``<stem>.md`` and ``<stem>.png`` to ``out_dir``.

    A report with a learned allocation (``allocation_search``) also gets ``<stem>_allocation_search.png``
    (:func:`plot_allocation_search`).

    Returns:
        ``{"json": path, "markdown": path, "figure": path}`` (and ``"search_figure"``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "figure": out / f"{stem}.png"}
    write_text_atomic(paths["json"], json.dumps(_jsonable(report), indent=4, allow_nan=False) + "\n")
    plot_compression(report, paths["figure"])
    if isinstance(report.get("allocation_search"), Mapping):
        paths["search_figure"] = plot_allocation_search(
            report["allocation_search"], out / f"{stem}{SEARCH_FIGURE_SUFFIX}"
        )
    write_text_atomic(paths["markdown"], render_compression_markdown(report, figure=paths["figure"].name))
    return paths


def plot_allocation_search(record: Mapping[str, Any], path: str | Path) -> Path:
    """Two panels of a layer-wise sparsity search record (:mod:`raagr2_tools.compression.rl_search`): the reward of
    each sample with the running best and the policy's baseline, and the chosen ratio of every group (its root conv);
    writes a PNG and returns its path."""
    samples = list(record.get("samples", []))
    if not samples:
        raise ValueError("the search record holds no samples")
    fig, _ = new_figure((11, 4))
    fig.clear()
    ax_reward, ax_ratios = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2]})
    index = [int(s["index"]) + 1 for s in samples]
    rewards = [float(s["reward"]) for s in samples]
    running = [max(rewards[: i + 1]) for i in range(len(rewards))]
    ax_reward.plot(index, rewards, "o", ms=3, label="sample")
    ax_reward.plot(index, running, "-", label="best so far")
    baselines = [(i, float(s["baseline"])) for i, s in zip(index, samples) if s.get("baseline") is not None]
    if baselines:
        ax_reward.plot(*zip(*baselines), "--", lw=1, label="baseline")
    reference = record.get("reference")
    if reference:
        ax_reward.axhline(float(reference["reward"]), color="k", ls=":", lw=1, label="uniform allocation")
    ax_reward.set_xlabel("sample")
    ax_reward.set_ylabel("reward (teacher mask agreement)")
    ax_reward.set_title("search")
    ax_reward.grid(alpha=0.3)
    ax_reward.legend(fontsize=7)
    chosen = record.get("chosen") or max(samples, key=lambda s: s["reward"])
    names = list(chosen["ratios"])
    ax_ratios.bar(range(len(names)), [float(chosen["ratios"][n]) for n in names])
    ax_ratios.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax_ratios.set_ylim(0, 1)
    ax_ratios.set_ylabel("fraction of teacher channels removed")
    cost = float(chosen.get("cost", float("nan")))
    teacher = float(record.get("teacher_cost", float("nan")))
    unit = (record.get("cost") or {}).get("unit", "MACs")
    index = int(chosen.get("index", 0))
    which = f"sample {index + 1}" if index >= 0 else "the uniform allocation: no sample beat it"
    ax_ratios.set_title(f"chosen allocation ({which}, {100 * cost / teacher:.1f} % of the teacher's {unit})")
    ax_ratios.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)
