"""The compression-study report: a results dict (from the study's JSON) as Markdown plus PNG figures.

:func:`write_study_report` renders ``out_dir/study_report.md`` and, beside it, the figures

- ``pareto_dice_vs_macs.png``: WT/TC/ET mean Dice against MACs per slice, sd error bars, Pareto front as a step line;
- ``pareto_dice_vs_latency.png``: the same against the median volume latency (models without latency are left out;
  no figure when no model has one);
- ``per_case_dice.png``: per-case Dice of every model and region as a strip plot (fixed-seed jitter, mean marker);
- ``cka_<model_id>.png``: linear-CKA heatmap of each ``cka`` entry (rows: reference layers, columns: model layers);
- ``cka_diagonal.png``: CKA of same-named layers against layer index, one line per model (when any diagonal).

The results schema is the one written by the compression study (``title``, ``preset``, ``data``, ``machine``,
``protocol``, ``reference``, ``models``, optional ``postprocessing`` and ``cka``, ``sources``). Optional parts may
be missing; ``None``, NaN and non-numbers are shown as ``n/a``. Dice differences are Dice points (100 x difference
of Dice in [0, 1]); HD95 values and differences are in mm. Every table goes through
:func:`raagr2_tools.reports.tables.markdown_table`, every figure through :mod:`raagr2_tools.reports.figures`
(Agg backend, atomic PNG write) and the Markdown through :func:`custom_modules.files.write_text_atomic`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from custom_modules.constants import REGION_DISPLAY_ORDER as REGIONS
from custom_modules.files import write_text_atomic
from raagr2_tools.reports.figures import new_figure, save_figure
from raagr2_tools.reports.tables import format_value, markdown_table, quantity_table

__all__ = ["KIND_ORDER", "REPORT_NAME", "pareto_front", "render_study_markdown", "write_study_report"]

#: file name of the Markdown report inside ``out_dir``
REPORT_NAME = "study_report.md"
#: the order of model kinds in tables and figures (unknown kinds last)
KIND_ORDER: tuple[str, ...] = ("teacher", "control", "compressed", "quantized")
#: seed of the strip-plot jitter, so the figure is the same on every run
JITTER_SEED = 0
NA = "n/a"
_KIND_COLOURS = {"teacher": "tab:blue", "control": "tab:green", "compressed": "tab:orange", "quantized": "tab:purple"}
_METRICS = ("dice", "hd95")


# ----------------------------------------------------------------------------------------------- small helpers
def _float(value: Any) -> float:
    """``value`` as a float; NaN for ``None``, booleans, non-numbers and non-finite values."""
    if isinstance(value, bool):
        return float("nan")
    try:
        out = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return out if math.isfinite(out) else float("nan")


def _finite(value: Any) -> bool:
    return not math.isnan(_float(value))


def _get(node: Any, *keys: Any) -> Any:
    """Nested lookup; ``None`` where any level is missing or not a mapping."""
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _fmt(value: Any, spec: str, scale: float = 1.0) -> str:
    v = _float(value)
    return format_value(v * scale + 0.0, spec)  # + 0.0 turns -0.0 into 0.0, so zero never prints as "-0.00"


def _int(value: Any) -> str:
    v = _float(value)
    return NA if math.isnan(v) else f"{int(round(v)):,}"


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) else []


def _cell(text: Any) -> str:
    """``text`` safe inside a Markdown table cell (pipes escaped, line breaks flattened)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _mean_sd(stats: Any, spec: str) -> str:
    mean, sd = _float(_get(stats, "mean")), _float(_get(stats, "std"))
    if math.isnan(mean):
        return NA
    return f"{format(mean, spec)} ± {format(sd, spec)}" if not math.isnan(sd) else format(mean, spec)


def _safe_name(model_id: str) -> str:
    """``model_id`` usable as part of a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(model_id)).strip("._") or "model"


def _ordered_models(results: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """``(model_id, entry)`` pairs: teacher and control first, then compressed, then quantized (stable otherwise)."""
    models = results.get("models")
    if not isinstance(models, Mapping):
        return []
    items = [(str(k), v) for k, v in models.items() if isinstance(v, Mapping)]
    rank = {kind: i for i, kind in enumerate(KIND_ORDER)}
    return sorted(items, key=lambda item: rank.get(str(item[1].get("kind")), len(KIND_ORDER)))


def _label(model_id: str, model: Mapping[str, Any]) -> str:
    return str(model.get("label") or model_id)


def _latency(model: Mapping[str, Any]) -> tuple[float, float, float]:
    """``(median, min, max)`` volume latency in s (NaN where missing)."""
    latency = model.get("latency")
    if not isinstance(latency, Mapping):
        return float("nan"), float("nan"), float("nan")
    values = [v for v in (_float(x) for x in _list(latency.get("volume_s"))) if not math.isnan(v)]
    median = _float(latency.get("volume_s_median"))
    if math.isnan(median) and values:
        ordered = sorted(values)
        mid = len(ordered) // 2
        median = ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])
    low, high = (min(values), max(values)) if values else (float("nan"), float("nan"))
    return median, low, high


def _macs_g(model: Mapping[str, Any]) -> float:
    return _float(model.get("macs_per_slice")) / 1e9


# ----------------------------------------------------------------------------------------------- Pareto front
def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated ``(x, y)`` points when ``x`` is minimised and ``y`` maximised.

    A point is dominated when another has ``x`` no larger and ``y`` no smaller, and is strictly better in one of
    them; identical points do not dominate each other. Points with a non-finite coordinate are never on the front.
    The indices come in order of increasing ``x`` (ties: increasing index), i.e. along the front's step line.
    """
    valid = [(i, float(x), float(y)) for i, (x, y) in enumerate(points) if _finite(x) and _finite(y)]
    front = []
    for i, xi, yi in valid:
        dominated = any(xj <= xi and yj >= yi and (xj < xi or yj > yi) for j, xj, yj in valid if j != i)
        if not dominated:
            front.append((xi, i))
    return [i for _, i in sorted(front)]


# ----------------------------------------------------------------------------------------------- Markdown parts
def _summary_paragraph(results: Mapping[str, Any], n_patients: int | None) -> str:
    protocol = results.get("protocol") if isinstance(results.get("protocol"), Mapping) else {}
    seeds = _list(protocol.get("seeds"))
    hd95 = protocol.get("hd95_definition")
    if isinstance(hd95, Mapping):
        hd95_text = str(hd95.get("name") or NA)
        if hd95.get("description"):
            hd95_text += f" ({hd95['description']})"
    else:
        hd95_text = str(hd95) if hd95 else NA
    reference = results.get("reference")
    ref_model = _get(results, "models", reference)
    ref_label = _label(str(reference), ref_model) if isinstance(ref_model, Mapping) else str(reference or NA)
    preset = f" (preset `{results['preset']}`)" if results.get("preset") else ""
    seed_text = ", ".join(str(s) for s in seeds) if seeds else NA
    return (
        f"Protocol{preset}: {_int(protocol.get('folds'))}-fold cross-validation, seeds {seed_text} "
        f"({len(seeds) if seeds else NA} seed(s)); the teacher is trained for {_int(protocol.get('epochs_teacher'))} "
        f"epochs and each compressed model fine-tuned for {_int(protocol.get('epochs_finetune'))} epochs. "
        f"{n_patients if n_patients is not None else NA} patients are scored; scored: "
        f"{protocol.get('scored') or NA}. HD95: {hd95_text}. Inference: {protocol.get('inference') or NA}. "
        f"Differences are taken against the reference model, {ref_label}. Dice is in [0, 1] (Dice points = 100 x "
        "Dice difference); HD95 in mm."
    )


def _n_patients(results: Mapping[str, Any], models: list[tuple[str, Mapping[str, Any]]]) -> int | None:
    scored = _list(_get(results, "data", "scored_patients"))
    if scored:
        return len(scored)
    patients = {
        str(case.get("patient") or case.get("case"))
        for _, model in models
        for case in _list(model.get("per_case"))
        if isinstance(case, Mapping)
    }
    return len(patients) or None


def _models_table(models: list[tuple[str, Mapping[str, Any]]]) -> str:
    header = ["model", "kind", "parameters", "GMACs / slice", "volume latency (s), median (min–max)"]
    header += [f"{r.upper()} Dice" for r in REGIONS] + [f"{r.upper()} HD95 (mm)" for r in REGIONS]
    rows = []
    for model_id, model in models:
        median, low, high = _latency(model)
        latency = NA if math.isnan(median) else f"{median:.2f}"
        if not math.isnan(median) and not math.isnan(low):
            latency += f" ({low:.2f}–{high:.2f})"
        backend = _get(model, "latency", "backend")
        if backend and not math.isnan(median):
            latency += f", {backend}"
        row = [_cell(_label(model_id, model)), _cell(model.get("kind") or NA), _int(model.get("parameters"))]
        row += [_fmt(_macs_g(model), ".3f"), _cell(latency)]
        row += [_mean_sd(_get(model, "summary", f"{r}_dice"), ".3f") for r in REGIONS]
        row += [_mean_sd(_get(model, "summary", f"{r}_hd95"), ".2f") for r in REGIONS]
        rows.append(row)
    return markdown_table(header, rows)


def _delta_cells(entry: Any, scale: float, spec: str) -> list[str]:
    """``[delta, "[low, high]", p]`` of one ``vs_reference`` entry (``scale``: 100 for Dice points)."""
    delta = _get(entry, "delta_mean")
    if not _finite(delta):
        delta = _get(entry, "ci", "mean")
    low, high = _get(entry, "ci", "low"), _get(entry, "ci", "high")
    ci = NA if not (_finite(low) and _finite(high)) else f"[{_fmt(low, spec, scale)}, {_fmt(high, spec, scale)}]"
    return [_fmt(delta, spec, scale), ci, _fmt(_get(entry, "wilcoxon", "p_value"), ".4f")]


def _delta_rows(name: str, comparison: Any) -> list[list[str]]:
    rows = []
    for region in REGIONS:
        dice, hd95 = _get(comparison, f"{region}_dice"), _get(comparison, f"{region}_hd95")
        if dice is None and hd95 is None:
            continue
        n = _get(dice, "wilcoxon", "n") or _get(dice, "ci", "n") or _get(hd95, "wilcoxon", "n")
        row = [_cell(name), region.upper()]
        row += _delta_cells(dice, 100.0, "+.2f") + _delta_cells(hd95, 1.0, "+.2f") + [_int(n)]
        rows.append(row)
    return rows


_DELTA_HEADER = [
    "region",
    "Δ Dice (points)",
    "95 % CI (points)",
    "Wilcoxon p (Dice)",
    "Δ HD95 (mm)",
    "95 % CI (mm)",
    "Wilcoxon p (HD95)",
    "n",
]


def _comparison_ns(comparisons: Sequence[Any]) -> tuple[list[int], set[str]]:
    """Every paired-sample size and Wilcoxon method named in ``comparisons`` (``vs_reference`` / ``vs_none``)."""
    ns, methods = [], set()
    for comparison in comparisons:
        if not isinstance(comparison, Mapping):
            continue
        for entry in comparison.values():
            n = _float(_get(entry, "wilcoxon", "n"))
            if math.isnan(n):
                n = _float(_get(entry, "ci", "n"))
            if not math.isnan(n):
                ns.append(int(n))
            method = _get(entry, "wilcoxon", "method")
            if method:
                methods.add(str(method))
    return ns, methods


def _wilcoxon_note(ns: list[int], methods: set[str]) -> str:
    method_text = f" ({', '.join(sorted(methods))})" if methods else ""
    if not ns:
        return f"Wilcoxon signed-rank test{method_text}, two-sided; no sample sizes recorded."
    n_max = max(ns)
    note = f"Wilcoxon signed-rank test{method_text}, two-sided, paired over n ≤ {n_max} patients."
    if 0 < n_max <= 5:
        p_min = 2.0 / 2**n_max
        note += (
            f" With n = {n_max} patients the smallest two-sided exact Wilcoxon p is {p_min:g} "
            "so no difference can reach p < 0.05."
        )
    return note


def _reference_section(results: Mapping[str, Any], models: list[tuple[str, Mapping[str, Any]]]) -> str:
    reference = results.get("reference")
    ref_model = _get(results, "models", reference)
    ref_label = _label(str(reference), ref_model) if isinstance(ref_model, Mapping) else str(reference or NA)
    rows, comparisons = [], []
    for model_id, model in models:
        comparison = model.get("vs_reference")
        if model_id == reference or not isinstance(comparison, Mapping):
            continue
        comparisons.append(comparison)
        rows += _delta_rows(_label(model_id, model), comparison)
    lines = [
        "## Against the reference",
        "",
        f"Mean paired difference model − {_cell(ref_label)} over patients, with its 95 % bootstrap confidence "
        "interval [low, high]; Dice in points (100 x Dice difference, higher is better), HD95 in mm (lower is "
        "better). Reduced-precision models are compared with their own FP32 ONNX model in the same (shipped) "
        "inference mode instead.",
        "",
        markdown_table(["model"] + _DELTA_HEADER, rows) if rows else "No comparisons recorded.\n",
        _wilcoxon_note(*_comparison_ns(comparisons)),
        "",
    ]
    return "\n".join(lines)


def _reduced_precision_section(models: list[tuple[str, Mapping[str, Any]]]) -> str:
    """Mask agreement of each reduced-precision model with its FP32 ONNX model: Dice of the two label maps per
    region, mean ± sd [min, max] over cases (empty if no model has it)."""
    rows = []
    for model_id, model in models:
        agreement = model.get("agreement_with_fp32")
        if not isinstance(agreement, Mapping):
            continue
        cells = []
        for region in REGIONS:
            stats = agreement.get(f"{region}_dice") or {}
            cells.append(f"{_mean_sd(stats, '.4f')} [{_fmt(stats.get('min'), '.4f')}, {_fmt(stats.get('max'), '.4f')}]")
        rows.append([_cell(_label(model_id, model)), *cells, _int((agreement.get("wt_dice") or {}).get("n"))])
    if not rows:
        return ""
    header = ["model"] + [f"{r.upper()} mask agreement" for r in REGIONS] + ["n"]
    return "\n".join(
        [
            "## Reduced precision",
            "",
            "Agreement of each reduced-precision model's label map with its FP32 ONNX model's (Dice of the two "
            "masks per region), mean ± sd [min, max] over cases; calibrated on each fold's training patients only.",
            "",
            markdown_table(header, rows),
        ]
    )


def _case_key(case: Mapping[str, Any]) -> tuple[str, str, str]:
    return str(case.get("case", NA)), str(case.get("fold", "")), str(case.get("seed", ""))


def _per_case_section(models: list[tuple[str, Mapping[str, Any]]]) -> str:
    values: dict[tuple[str, str, str], dict[str, Any]] = {}
    for model_id, model in models:
        for case in _list(model.get("per_case")):
            if isinstance(case, Mapping):
                values.setdefault(_case_key(case), {})[model_id] = case.get(f"{REGIONS[0]}_dice")
    if not values:
        return "## Per case\n\nNo per-case results recorded.\n"
    keys = list(values)
    show_fold = len({k[1] for k in keys}) > 1
    show_seed = len({k[2] for k in keys}) > 1
    header = ["case"] + (["fold"] if show_fold else []) + (["seed"] if show_seed else [])
    header += [_cell(_label(model_id, model)) for model_id, model in models]
    rows = []
    for key in sorted(keys):
        row = [_cell(key[0])] + ([key[1]] if show_fold else []) + ([key[2]] if show_seed else [])
        row += [_fmt(values[key].get(model_id), ".3f") for model_id, _ in models]
        rows.append(row)
    return f"## Per case\n\n{REGIONS[0].upper()} Dice of every scored case and model.\n\n" + markdown_table(
        header, rows
    )


def _options_text(options: Any) -> str:
    if not isinstance(options, Mapping) or not options:
        return NA
    return ", ".join(f"{k}={v}" for k, v in options.items())


def _postprocessing_section(results: Mapping[str, Any]) -> str:
    post = results.get("postprocessing")
    if not isinstance(post, Mapping) or not post:
        return ""
    reference = results.get("reference")
    ref_model = _get(results, "models", reference)
    ref_label = _label(str(reference), ref_model) if isinstance(ref_model, Mapping) else str(reference or NA)
    header = (
        ["option", "settings"] + [f"{r.upper()} Dice" for r in REGIONS] + [f"{r.upper()} HD95 (mm)" for r in REGIONS]
    )
    rows, delta_rows, comparisons = [], [], []
    for name, entry in post.items():
        if not isinstance(entry, Mapping):
            continue
        row = [_cell(name), _cell(_options_text(entry.get("options")))]
        row += [_mean_sd(_get(entry, "summary", f"{r}_dice"), ".3f") for r in REGIONS]
        row += [_mean_sd(_get(entry, "summary", f"{r}_hd95"), ".2f") for r in REGIONS]
        rows.append(row)
        if isinstance(entry.get("vs_none"), Mapping):
            comparisons.append(entry["vs_none"])
            delta_rows += _delta_rows(str(name), entry["vs_none"])
    lines = [
        "## Post-processing",
        "",
        f"Measured on the reference model, {_cell(ref_label)}.",
        "",
        markdown_table(header, rows),
    ]
    if delta_rows:
        lines += [
            "Against no post-processing (option − none, 95 % bootstrap CI):",
            "",
            markdown_table(["option"] + _DELTA_HEADER, delta_rows),
            _wilcoxon_note(*_comparison_ns(comparisons)),
            "",
        ]
    return "\n".join(lines)


def _diagonal(entry: Mapping[str, Any]) -> list[float]:
    return [_float(v) for v in _list(entry.get("diagonal"))]


def _cka_section(results: Mapping[str, Any], figures: Mapping[str, str]) -> str:
    cka = results.get("cka")
    if not isinstance(cka, Mapping) or not cka:
        return ""
    models = results.get("models") if isinstance(results.get("models"), Mapping) else {}
    rows = []
    for model_id, entry in cka.items():
        if not isinstance(entry, Mapping):
            continue
        model = models.get(model_id) if isinstance(models.get(model_id), Mapping) else {}
        diag = [v for v in _diagonal(entry) if not math.isnan(v)]
        ref = entry.get("reference") or NA
        ref_model = models.get(ref) if isinstance(models.get(ref), Mapping) else None
        ref_label = _label(str(ref), ref_model) if ref_model is not None else str(ref)
        figure = figures.get(f"cka:{model_id}")
        rows.append(
            [
                _cell(_label(str(model_id), model)),
                _cell(ref_label),
                f"{len(_list(entry.get('row_layers')))} x {len(_list(entry.get('col_layers')))}",
                str(len(diag)),
                _fmt(sum(diag) / len(diag) if diag else None, ".3f"),
                _fmt(min(diag) if diag else None, ".3f"),
                f"[{figure}]({figure})" if figure else NA,
            ]
        )
    header = ["model", "reference", "layers (ref x model)", "same-named layers", "mean diagonal CKA", "min", "heatmap"]
    lines = [
        "## Representation similarity (CKA)",
        "",
        "Linear CKA between the reference's layer activations (rows) and the model's (columns), in [0, 1]; the "
        "diagonal pairs layers of the same name.",
        "",
        markdown_table(header, rows),
    ]
    for key, name in figures.items():
        if key.startswith("cka:"):
            lines += [f"![CKA {key[4:]}]({name})", ""]
    if "cka_diagonal" in figures:
        lines += [f"![CKA of same-named layers]({figures['cka_diagonal']})", ""]
    return "\n".join(lines)


def _machine_section(results: Mapping[str, Any]) -> str:
    machine = results.get("machine")
    if not isinstance(machine, Mapping):
        return "## Machine\n\nNot recorded.\n"
    flags = _list(machine.get("flags") or machine.get("cpu_flags"))
    bf16 = machine.get("bf16") if isinstance(machine.get("bf16"), Mapping) else {}
    used = bf16.get("used")
    speedup = _fmt(bf16.get("speedup"), ".2f")
    rows = [
        ("CPU model", _cell(machine.get("cpu_model") or NA)),
        ("CPU flags", _cell(", ".join(str(f) for f in flags)) if flags else NA),
        ("torch threads", _int(machine.get("torch_threads") or machine.get("torch_default_threads"))),
        ("train step fp32 (s)", _fmt(bf16.get("train_step_fp32_s"), ".3f")),
        ("train step bf16 (s)", _fmt(bf16.get("train_step_bf16_s"), ".3f")),
        ("bf16 speed-up (fp32 / bf16)", speedup if speedup == NA else f"{speedup} x"),
        ("bf16 used", NA if used is None else ("yes" if used else "no")),
        ("study time: sum of its units (min)", _fmt(_float(results.get("units_seconds")) / 60, ".1f")),
    ]
    return quantity_table(rows, "Machine")


def _data_section(results: Mapping[str, Any]) -> str:
    data = results.get("data") if isinstance(results.get("data"), Mapping) else {}
    scored = _list(data.get("scored_patients"))
    extra = _list(data.get("extra_training_cases"))
    lines = [
        "## Data and licence",
        "",
        f"Dataset folder: `{data.get('dataset_dir') or NA}`.",
        "",
        f"Scored patients ({len(scored)}): {', '.join(str(p) for p in scored) if scored else NA}.",
        "",
        f"Extra training cases ({len(extra)}): {', '.join(str(c) for c in extra) if extra else 'none'}.",
        "",
    ]
    attribution = data.get("attribution")
    if attribution:
        lines += [str(attribution).rstrip("\n"), ""]
    return "\n".join(lines)


def render_study_markdown(results: Mapping[str, Any], figures: Mapping[str, str] | None = None) -> str:
    """The report's Markdown. ``figures`` maps figure keys (``pareto_macs``, ``pareto_latency``, ``per_case``,
    ``cka:<model_id>``, ``cka_diagonal``) to PNG names relative to the report; only those are linked."""
    figures = dict(figures or {})
    models = _ordered_models(results)
    source = _get(results, "sources", "results_json")
    parts = [
        f"# {results.get('title') or 'Compression study'}",
        "",
        _summary_paragraph(results, _n_patients(results, models)),
        "",
        "## Models",
        "",
        "Mean ± sd over scored cases; MACs per 2-D slice in GMACs (1e9); latency of one volume.",
        "",
        _models_table(models) if models else "No models recorded.\n",
    ]
    for key, alt in (("pareto_macs", "Dice against MACs per slice"), ("pareto_latency", "Dice against latency")):
        if key in figures:
            parts += [f"![{alt}]({figures[key]})", ""]
    parts.append(_reference_section(results, models))
    parts.append(_per_case_section(models))
    if "per_case" in figures:
        parts += [f"![Per-case Dice]({figures['per_case']})", ""]
    for section in (
        _reduced_precision_section(models),
        _postprocessing_section(results),
        _cka_section(results, figures),
    ):
        if section:
            parts.append(section)
    parts.append(_machine_section(results))
    parts.append(_data_section(results))
    source_text = f"`{source}`" if source else "the study's results JSON (name not recorded)"
    parts += [
        "## Source",
        "",
        f"Every table and figure of this report is rendered from {source_text}.",
        "",
    ]
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------- figures
def _panels(ncols: int, figsize: tuple[float, float]) -> tuple[Any, list[Any]]:
    """A figure with ``ncols`` side-by-side axes, made through :func:`new_figure` (Agg backend)."""
    fig, ax = new_figure(figsize)
    ax.remove()
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _plot_pareto(
    models: list[tuple[str, Mapping[str, Any]]], xs: list[float], xlabel: str, path: Path, title: str
) -> Path | None:
    chosen = [(m, x) for m, x in zip(models, xs) if not math.isnan(x)]
    if not chosen:
        return None
    fig, axes = _panels(len(REGIONS), (5.0 * len(REGIONS), 4.5))
    kinds_seen: set[str] = set()
    for ax, region in zip(axes, REGIONS):
        points = []
        for (model_id, model), x in chosen:
            stats = _get(model, "summary", f"{region}_dice")
            y, sd = _float(_get(stats, "mean")), _float(_get(stats, "std"))
            points.append((x, y))
            if math.isnan(y):
                continue
            kind = str(model.get("kind"))
            colour = _KIND_COLOURS.get(kind, "tab:gray")
            ax.errorbar(
                x,
                y,
                yerr=None if math.isnan(sd) else sd,
                fmt="o",
                color=colour,
                capsize=3,
                label=kind if kind not in kinds_seen else None,
                zorder=3,
            )
            kinds_seen.add(kind)
            ax.annotate(
                _label(model_id, model), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, zorder=4
            )
        front = pareto_front(points)
        if front:
            fx = [points[i][0] for i in front]
            fy = [points[i][1] for i in front]
            ax.step(fx, fy, where="post", color="black", linewidth=1, alpha=0.7, label="Pareto front", zorder=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{region.upper()} Dice (mean ± sd)")
        ax.set_title(region.upper())
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    by_label = dict(zip(labels, handles))
    for ax in axes[1:]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            by_label.setdefault(label, handle)
    if by_label:
        axes[-1].legend(by_label.values(), by_label.keys(), fontsize=7, loc="best")
    fig.suptitle(title)
    return save_figure(fig, path)


def _plot_per_case(models: list[tuple[str, Mapping[str, Any]]], path: Path) -> Path | None:
    import numpy as np

    series = [
        (model_id, model, [case for case in _list(model.get("per_case")) if isinstance(case, Mapping)])
        for model_id, model in models
    ]
    series = [s for s in series if s[2]]
    if not series:
        return None
    rng = np.random.default_rng(JITTER_SEED)
    width = max(3.5, 0.6 * len(series) + 1.5)
    fig, axes = _panels(len(REGIONS), (width * len(REGIONS), 4.5))
    for ax, region in zip(axes, REGIONS):
        for position, (model_id, model, cases) in enumerate(series):
            values = np.array([_float(case.get(f"{region}_dice")) for case in cases])
            values = values[np.isfinite(values)]
            jitter = rng.uniform(-0.15, 0.15, size=len(values))
            colour = _KIND_COLOURS.get(str(model.get("kind")), "tab:gray")
            ax.scatter(position + jitter, values, s=14, alpha=0.6, color=colour, zorder=3)
            if len(values):
                ax.scatter([position], [values.mean()], marker="D", s=40, color="black", zorder=4)
        ax.set_xticks(range(len(series)), [_label(m, d) for m, d, _ in series], rotation=45, ha="right", fontsize=7)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(f"{region.upper()} Dice per case")
        ax.set_title(region.upper())
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Per-case Dice (black diamond: mean)")
    return save_figure(fig, path)


def _plot_cka(model_label: str, ref_label: str, entry: Mapping[str, Any], path: Path) -> Path | None:
    import numpy as np

    rows = [[_float(v) for v in _list(row)] for row in _list(entry.get("matrix"))]
    if not rows or not any(rows):
        return None
    ncols = max(len(r) for r in rows)
    matrix = np.full((len(rows), ncols), np.nan)
    for i, row in enumerate(rows):
        matrix[i, : len(row)] = row
    row_layers = [str(x) for x in _list(entry.get("row_layers"))]
    col_layers = [str(x) for x in _list(entry.get("col_layers"))]
    size = (min(4.0 + 0.18 * ncols, 20.0), min(3.5 + 0.18 * len(rows), 20.0))
    fig, ax = new_figure(size)
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="linear CKA")
    if len(row_layers) == matrix.shape[0]:
        ax.set_yticks(range(len(row_layers)), row_layers, fontsize=5)
    if len(col_layers) == matrix.shape[1]:
        ax.set_xticks(range(len(col_layers)), col_layers, fontsize=5, rotation=90)
    ax.set_ylabel(f"{ref_label} layers")
    ax.set_xlabel(f"{model_label} layers")
    ax.set_title(f"CKA: {model_label} vs {ref_label}", fontsize=9)
    return save_figure(fig, path)


def _plot_cka_diagonal(lines: list[tuple[str, list[float]]], path: Path) -> Path | None:
    lines = [(label, values) for label, values in lines if any(not math.isnan(v) for v in values)]
    if not lines:
        return None
    fig, ax = new_figure((6.5, 4.0))
    for label, values in lines:
        ax.plot(range(len(values)), values, marker="o", markersize=3, label=label)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("layer index (same-named layers)")
    ax.set_ylabel("linear CKA")
    ax.set_title("CKA of same-named layers")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def _write_figures(results: Mapping[str, Any], out_dir: Path) -> dict[str, str]:
    models = _ordered_models(results)
    figures: dict[str, str] = {}
    written = _plot_pareto(
        models,
        [_macs_g(m) for _, m in models],
        "GMACs per slice",
        out_dir / "pareto_dice_vs_macs.png",
        "Mean Dice against cost (error bars: sd over cases)",
    )
    if written:
        figures["pareto_macs"] = written.name
    written = _plot_pareto(
        models,
        [_latency(m)[0] for _, m in models],
        "volume latency, median (s)",
        out_dir / "pareto_dice_vs_latency.png",
        "Mean Dice against latency (error bars: sd over cases)",
    )
    if written:
        figures["pareto_latency"] = written.name
    written = _plot_per_case(models, out_dir / "per_case_dice.png")
    if written:
        figures["per_case"] = written.name
    cka = results.get("cka")
    if isinstance(cka, Mapping):
        all_models = results.get("models") if isinstance(results.get("models"), Mapping) else {}
        diagonals = []
        for model_id, entry in cka.items():
            if not isinstance(entry, Mapping):
                continue
            model = all_models.get(model_id) if isinstance(all_models.get(model_id), Mapping) else {}
            ref = entry.get("reference")
            ref_model = all_models.get(ref) if isinstance(all_models.get(ref), Mapping) else None
            ref_label = _label(str(ref), ref_model) if ref_model is not None else str(ref or "reference")
            label = _label(str(model_id), model)
            written = _plot_cka(label, ref_label, entry, out_dir / f"cka_{_safe_name(model_id)}.png")
            if written:
                figures[f"cka:{model_id}"] = written.name
            diagonals.append((label, _diagonal(entry)))
        written = _plot_cka_diagonal(diagonals, out_dir / "cka_diagonal.png")
        if written:
            figures["cka_diagonal"] = written.name
    return figures


def write_study_report(results: Mapping[str, Any], out_dir: Path) -> Path:
    """Render ``results`` (the study's results dict) to ``out_dir/study_report.md`` and its PNG figures beside it
    (all written atomically); returns the Markdown path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = _write_figures(results, out_dir)
    return write_text_atomic(out_dir / REPORT_NAME, render_study_markdown(results, figures))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.study.report RESULTS.json [OUT_DIR]``: render a results JSON again."""
    import json
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m benchmarks.study.report RESULTS.json [OUT_DIR]", file=sys.stderr)
        return 2
    results_path = Path(args[0])
    out_dir = Path(args[1]) if len(args) > 1 else results_path.parent
    print(write_study_report(json.loads(results_path.read_text()), out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
