"""The allocation study: the learned layer-wise sparsity (``allocation: rl``) against the hand-made ``uniform`` and
``global`` allocations on real patients, at equal cost and equal fine-tuning budget.

    python -m benchmarks.study.allocation --data ../shared/data/upenn_gbm \\
        --extra-training ../shared/data/tcga_lgg_brainles --plan benchmarks/study/plans/allocation_cpu.json \\
        --workdir runs/study/upenn_allocation --results benchmarks/results/study_upenn_allocation

Per patient-level fold (the study's folds, :class:`.runner.Study`) it trains the baseline teacher and compresses
it once per ``compressed`` entry of the plan through ``python -m monai.bundle run compress``, as a user would: the
same criterion, ratio, schedule and fine-tuning epochs, only the allocation differs. The ``rl`` entries search at
the cost of the uniform allocation at the same ratio (MACs, or ONNX Runtime latency predicted by the per-layer table
with ``rl_cost: latency``), so every arm costs the same by construction. Every model is scored on the fold's test
patients (the delivered label map, WT/TC/ET Dice and HD95) and timed on ONNX Runtime (one slice at the bundle's
``roi_size``, 3 rounds). The units are the study's own (same folders, resumable); ``results.json``, ``report.md``
and the figures are rebuilt from them at the end.

Every seed trains its own teacher per fold and compresses it once per arm. The comparisons are paired per patient
(each patient is tested once per seed, in its fold; its metric is the mean over seeds, so the n of a test is the
number of patients, not of patient-seed pairs): mean difference with a percentile bootstrap 95 % CI and the exact
Wilcoxon signed-rank test, for each learned arm against ``uniform`` and against ``global``, and for ``global``
against ``uniform``; the spread over seeds of each arm's mean is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

from custom_modules.constants import REGION_DISPLAY_ORDER
from custom_modules.files import write_json, write_text_atomic
from raagr2_tools.compression.engine import ALLOCATIONS
from raagr2_tools.compression.latency_table import compare_networks_ms
from raagr2_tools.reports.figures import new_figure, save_figure
from raagr2_tools.reports.tables import markdown_table

from ..machine import machine_description
from .plan import CompressionSpec, load_plan
from .runner import ATTRIBUTION, Study, compare, summarise

__all__ = ["main", "run_allocation_study"]

#: interleaved latency rounds of a fold's models (each model each round: median over 3 sessions of 20 runs)
LATENCY_ROUNDS = 5


def _by_allocation(plan_specs: tuple[CompressionSpec, ...]) -> dict[str, CompressionSpec]:
    return {spec.model_id: spec for spec in plan_specs}


def _onnx_latency(study: Study, models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every model of a fold on ONNX Runtime, interleaved (:func:`compare_networks_ms`): per model its milliseconds
    per round and, round by round, its ratio to the teacher (the machine's speed drifts between rounds)."""
    size = study.plan.bundle_settings.get("roi_size", [128, 128])
    shape = (1, 4, int(size[0]), int(size[1]))
    networks = {model_id: study.load(model) for model_id, model in models.items()}
    times = compare_networks_ms(networks, shape, "onnxruntime", rounds=LATENCY_ROUNDS)
    teacher = times["teacher_baseline"]
    out = {}
    for model_id, rounds in times.items():
        ratios = [t / ref for t, ref in zip(rounds, teacher)]
        out[model_id] = {
            "median_ms": statistics.median(rounds),
            "min_ms": min(rounds),
            "max_ms": max(rounds),
            "rounds_ms": rounds,
            "vs_teacher": statistics.median(ratios),
            "vs_teacher_rounds": ratios,
        }
    return {"backend": "onnxruntime", "input_shape": list(shape), "rounds": LATENCY_ROUNDS, "models": out}


def _search_summary(bundle_dir: str) -> dict[str, Any] | None:
    report = json.loads((Path(bundle_dir) / "docs" / "compression_report.json").read_text())
    search = report.get("allocation_search")
    if not search:
        return None
    return {
        "rewards": [s["reward"] for s in search["samples"]],
        "uniform_reward": search["reference"]["reward"],
        "chosen_is_uniform": bool(search.get("chosen_is_reference")),
        "chosen": search["chosen"],
        "target": search.get("target"),
        "cost": {k: v for k, v in search["cost"].items() if k != "calibration"},
        "teacher_cost": search.get("teacher_cost"),
        "latency_check": report.get("latency_check"),
        "pruned_flops": report["complexity"]["pruned"]["flops"],
    }


def run_allocation_study(
    study: Study, folds: list[int] | None = None, seeds: list[int] | None = None
) -> dict[str, Any]:
    """Every unit of every seed and fold (or of those given), then the aggregate results (JSON-ready)."""
    plan = study.plan
    study.check_workdir()
    study.machine = {**machine_description(), **study.machine}
    study.use_bf16()
    specs = _by_allocation(plan.compressed)
    per_model: dict[str, dict[str, Any]] = {i: {"rows": [], "folds": []} for i in ["teacher_baseline", *specs]}
    runs = [
        (seed, fold)
        for seed in plan.seeds
        if seeds is None or seed in seeds
        for fold in study.folds()
        if folds is None or fold["fold"] in folds
    ]
    for seed, fold in runs:
        tag = f"s{seed}/f{fold['fold']}"
        models = {
            "teacher_baseline": study.unit(
                f"{tag}/teacher_baseline",
                lambda d, fold=fold, seed=seed: study.train(d, fold, seed, "baseline", plan.teacher_epochs, {}),
            )
        }
        for model_id, spec in specs.items():
            models[model_id] = study.unit(
                f"{tag}/{model_id}",
                lambda d, fold=fold, seed=seed, spec=spec: study.compress(
                    d, fold, seed, spec, models["teacher_baseline"]
                ),
            )
        cases = study.cases(fold)
        scores = {
            model_id: study.unit(
                f"{tag}/score/{model_id}",
                lambda _, m=model, i=model_id, fold=fold, seed=seed: study._score(m, i, cases, fold, seed),
            )
            for model_id, model in models.items()
        }
        timed = study.unit(f"{tag}/onnx_latency_interleaved", lambda _, models=models: _onnx_latency(study, models))
        for model_id, model in models.items():
            entry = {
                "seed": seed,
                "fold": fold["fold"],
                "parameters": scores[model_id]["parameters"],
                "macs_per_slice": scores[model_id]["macs_per_slice"],
                "onnx_latency": timed["models"][model_id],
            }
            if "bundle_dir" in model:
                entry["search"] = _search_summary(model["bundle_dir"])
            per_model[model_id]["rows"] += scores[model_id]["rows"]
            per_model[model_id]["folds"].append(entry)
    return aggregate(study, per_model, specs)


def _pairs(specs: dict[str, CompressionSpec]) -> list[tuple[str, str]]:
    """(model, reference) to compare: each learned arm against the hand-made allocation whose cost it was searched
    at (equal cost by construction), and ``global`` against ``uniform`` (not at equal MACs unless ``equal_macs``)."""
    hand_made = {spec.allocation: model_id for model_id, spec in specs.items() if spec.allocation in ALLOCATIONS}
    pairs = [
        (model_id, hand_made[spec.rl_target])
        for model_id, spec in specs.items()
        if spec.allocation == "rl" and spec.rl_target in hand_made
    ]
    if "global" in hand_made and "uniform" in hand_made:
        pairs.append((hand_made["global"], hand_made["uniform"]))
    return pairs


def patient_means(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per case: every metric averaged over the seeds that scored it (``seed`` ``"mean"``, ``seeds`` n)."""
    by_case: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_case.setdefault(row["case"], []).append(row)
    out = []
    for case, case_rows in sorted(by_case.items()):
        mean = {"case": case, "patient": case_rows[0].get("patient"), "fold": case_rows[0].get("fold")}
        for key in (f"{r}_{k}" for k in ("dice", "hd95") for r in REGION_DISPLAY_ORDER):
            values = [float(r[key]) for r in case_rows if r.get(key) is not None and np.isfinite(float(r[key]))]
            mean[key] = float(np.mean(values)) if values else None
        out.append({**mean, "seed": "mean", "seeds": len(case_rows)})
    return out


def seed_spread(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per metric: the mean over cases of each seed, and their sd over seeds."""
    seeds = sorted({r["seed"] for r in rows})
    out = {}
    for key in (f"{r}_{k}" for k in ("dice", "hd95") for r in REGION_DISPLAY_ORDER):
        means = []
        for seed in seeds:
            values = [float(r[key]) for r in rows if r["seed"] == seed and r.get(key) is not None]
            values = [v for v in values if np.isfinite(v)]
            if values:
                means.append(float(np.mean(values)))
        out[key] = {"per_seed": means, "sd_over_seeds": float(np.std(means, ddof=1)) if len(means) > 1 else None}
    return {"seeds": seeds, "metrics": out}


def _measured_vs_target(per_model: dict[str, dict[str, Any]], specs: dict[str, CompressionSpec]) -> None:
    """For each learned arm, per fold: its measured ONNX Runtime latency over the arm it was searched against, the
    median of the ratios taken round by round in the fold's interleaved measurement (``measured_vs_target``)."""
    hand_made = {spec.allocation: model_id for model_id, spec in specs.items() if spec.allocation in ALLOCATIONS}
    for model_id, spec in specs.items():
        reference = hand_made.get(spec.rl_target) if spec.allocation == "rl" else None
        if reference is None:
            continue
        for mine, theirs in zip(per_model[model_id]["folds"], per_model[reference]["folds"]):
            rounds = zip(mine["onnx_latency"]["rounds_ms"], theirs["onnx_latency"]["rounds_ms"])
            mine["measured_vs_target"] = statistics.median(a / b for a, b in rounds)


def aggregate(study: Study, per_model: dict[str, dict[str, Any]], specs: dict[str, CompressionSpec]) -> dict[str, Any]:
    plan = study.plan
    _measured_vs_target(per_model, specs)
    models = {}
    for model_id, entry in per_model.items():
        spec = specs.get(model_id)
        latency = [f["onnx_latency"]["median_ms"] for f in entry["folds"]]
        vs_teacher = [f["onnx_latency"]["vs_teacher"] for f in entry["folds"]]
        models[model_id] = {
            "label": spec.label if spec else "teacher (baseline)",
            "allocation": spec.allocation if spec else None,
            "rl_cost": spec.rl_cost if spec and spec.allocation == "rl" else None,
            "per_case": entry["rows"],
            "per_patient": patient_means(entry["rows"]),
            "summary": summarise(patient_means(entry["rows"])),
            "over_seeds": seed_spread(entry["rows"]),
            "per_fold": entry["folds"],
            "macs_per_slice_mean": float(np.mean([f["macs_per_slice"] for f in entry["folds"]])),
            "parameters_mean": float(np.mean([f["parameters"] for f in entry["folds"]])),
            "onnx_latency_ms_mean_over_folds": float(np.mean(latency)) if latency else None,
            "onnx_latency_vs_teacher_mean_over_folds": float(np.mean(vs_teacher)) if vs_teacher else None,
        }
    comparisons = []
    for model_id, reference in _pairs(specs):
        result = compare(patient_means(per_model[model_id]["rows"]), patient_means(per_model[reference]["rows"]))
        comparisons.append(
            {
                "model": model_id,
                "reference": reference,
                "metrics": {
                    m: {"delta_mean": c["delta_mean"], "ci": c["ci"], "wilcoxon": c["wilcoxon"], "n": len(c["cases"])}
                    for m, c in result.items()
                },
            }
        )
    return {
        "title": f"Allocation study: {plan.name}",
        "preset": plan.preset,
        "plan": plan.as_dict(),
        "data": {"dataset_dir": str(study.data), "attribution": ATTRIBUTION},
        "machine": study.machine,
        "protocol": {
            "folds": plan.folds,
            "seeds": sorted({f["seed"] for m in per_model.values() for f in m["folds"]}),
            "teacher_epochs": plan.teacher_epochs,
            "finetune_epochs_every_arm": plan.finetune_epochs,
            "equal_cost": "each rl arm is scaled to the cost of the hand-made allocation it is compared with, at the "
            "same ratio (MACs, or the latency predicted by the per-layer ONNX Runtime table): rl against uniform, "
            "rl at global against global; global and uniform remove the same fraction of channels, not the same MACs",
            "scored": "the delivered label map read back as regions (WT = 1|2|4, TC = 1|4, ET = 4), per patient never "
            "trained on",
            "hd95_definition": study.hd95,
            "statistics": "paired over patients (each patient's metric: its mean over seeds): percentile bootstrap "
            "95% CI of the mean difference, two-sided exact Wilcoxon signed-rank",
        },
        "models": models,
        "comparisons": comparisons,
        "units_seconds": round(study.unit_seconds, 1),
    }


def verdicts(results: dict[str, Any]) -> list[str]:
    """One sentence per comparison, read off its Dice deltas and CIs: a region counts as better (worse) only where
    the whole 95 % CI of the paired difference lies above (below) zero."""
    models = results["models"]
    out = []
    for c in results["comparisons"]:
        better, worse, parts = [], [], []
        for r in REGION_DISPLAY_ORDER:
            d = c["metrics"][f"{r}_dice"]
            low, high = d["ci"]["low"], d["ci"]["high"]
            parts.append(f"{r.upper()} {100 * d['delta_mean']:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]")
            if low is not None and low > 0:
                better.append(r.upper())
            elif high is not None and high < 0:
                worse.append(r.upper())
        if better and not worse:
            call = f"better on {', '.join(better)}"
        elif worse and not better:
            call = f"worse on {', '.join(worse)}"
        elif better and worse:
            call = f"better on {', '.join(better)}, worse on {', '.join(worse)}"
        else:
            call = "no difference shown (every CI includes 0)"
        n = c["metrics"]["wt_dice"]["n"]
        macs = models[c["model"]]["macs_per_slice_mean"] / models[c["reference"]]["macs_per_slice_mean"]
        out.append(
            f"**{models[c['model']]['label']}** against {models[c['reference']]['label']} (MACs ratio {macs:.3f}): "
            f"{call}; Dice points {'; '.join(parts)} (n = {n} patients)."
        )
    return out


def render_report(results: dict[str, Any]) -> str:
    """The study's Markdown report (tables and links to the figures beside it)."""
    models = results["models"]
    teacher_macs = models["teacher_baseline"]["macs_per_slice_mean"]
    lines = [f"# {results['title']}\n", f"Preset: {results['preset']}.\n"]
    p = results["protocol"]
    seeds = ", ".join(map(str, p["seeds"]))
    lines.append(
        f"{p['folds']} patient-level folds, seeds {seeds}; teacher {p['teacher_epochs']} epochs, every compressed "
        f"model fine-tuned {p['finetune_epochs_every_arm']} epochs. Equal cost: {p['equal_cost']}. Scored: "
        f"{p['scored']}; HD95: {p['hd95_definition']}. Statistics: {p['statistics']}. "
        f"Machine: {results['machine'].get('cpu_model')} ({', '.join(results['machine'].get('cpu_flags', []))}).\n"
    )
    header = ["model", "MACs / slice (G)", "MACs / teacher", "ONNX Runtime ms", "ONNX Runtime latency / teacher"]
    header += [f"{r.upper()} Dice" for r in REGION_DISPLAY_ORDER] + [
        f"{r.upper()} HD95 (mm)" for r in REGION_DISPLAY_ORDER
    ]
    rows = []
    for model in models.values():
        s = model["summary"]
        cells = [
            model["label"],
            f"{model['macs_per_slice_mean'] / 1e9:.3f}",
            f"{model['macs_per_slice_mean'] / teacher_macs:.3f}",
            f"{model['onnx_latency_ms_mean_over_folds']:.2f}",
            f"{model['onnx_latency_vs_teacher_mean_over_folds']:.3f}",
        ]
        for kind in ("dice", "hd95"):
            for r in REGION_DISPLAY_ORDER:
                v = s[f"{r}_{kind}"]
                cells.append("n/a" if v["mean"] is None else f"{v['mean']:.3f} ± {v['std']:.3f}")
        rows.append(cells)
    lines += [
        "## Models\n",
        "Mean ± sd over patients of each patient's mean over seeds; MACs per 240x240 slice; ONNX Runtime: one slice at "
        "the bundle's roi_size, mean over seeds and folds of the median over interleaved rounds, and of the ratio to "
        "the fold's teacher taken round by round.\n",
        markdown_table(header, rows),
    ]
    header = ["model"] + [f"{r.upper()} Dice per seed" for r in REGION_DISPLAY_ORDER]
    rows = [
        [m["label"]]
        + [
            ", ".join(f"{v:.3f}" for v in m["over_seeds"]["metrics"][f"{r}_dice"]["per_seed"])
            for r in REGION_DISPLAY_ORDER
        ]
        for m in models.values()
    ]
    lines += ["Mean over patients of each seed:\n", markdown_table(header, rows)]
    lines.append("![Per-patient Dice per allocation](per_case_dice.png)\n")
    header = [
        "model",
        "reference",
        "MACs model / reference",
        "region",
        "Δ Dice (points)",
        "95 % CI",
        "Wilcoxon p",
        "Δ HD95 (mm)",
        "95 % CI",
        "n",
    ]
    rows = []
    for c in results["comparisons"]:
        for r in REGION_DISPLAY_ORDER:
            d, h = c["metrics"][f"{r}_dice"], c["metrics"][f"{r}_hd95"]
            rows.append(
                [
                    models[c["model"]]["label"],
                    models[c["reference"]]["label"],
                    f"{models[c['model']]['macs_per_slice_mean'] / models[c['reference']]['macs_per_slice_mean']:.3f}",
                    r.upper(),
                    f"{100 * d['delta_mean']:+.2f}",
                    f"[{100 * d['ci']['low']:+.2f}, {100 * d['ci']['high']:+.2f}]",
                    f"{d['wilcoxon']['p_value']:.4f}",
                    f"{h['delta_mean']:+.2f}",
                    f"[{h['ci']['low']:+.2f}, {h['ci']['high']:+.2f}]",
                    str(d["n"]),
                ]
            )
    lines += ["## Paired comparisons\n", markdown_table(header, rows), "## What it shows\n"]
    lines += [f"- {v}" for v in verdicts(results)]
    if results["comparisons"]:
        n = results["comparisons"][0]["metrics"]["wt_dice"]["n"]
        lines.append(
            f"\nWith {n} patients the smallest two-sided exact Wilcoxon p is {2.0 ** (1 - n):.4g}; the CIs are "
            "percentile bootstrap intervals over the patients.\n"
        )
    header = [
        "model",
        "seed",
        "fold",
        "chosen reward",
        "first reward",
        "cost / target",
        "latency check (searched / uniform)",
    ]
    rows = []
    for model in models.values():
        for f in model["per_fold"]:
            search = f.get("search")
            if not search:
                continue
            check = search.get("latency_check") or {}
            rows.append(
                [
                    model["label"],
                    str(f["seed"]),
                    str(f["fold"]),
                    f"{search['uniform_reward']:.4f}",
                    f"{max(search['rewards']):.4f}",
                    "uniform" if search["chosen_is_uniform"] else f"sample {search['chosen']['index'] + 1}",
                    f"{search['chosen']['cost'] / search['target']['cost']:.3f}",
                    f"{check['searched_vs_target']:.3f}" if check.get("searched_vs_target") else "n/a (MACs)",
                    f"{f['measured_vs_target']:.3f}" if "measured_vs_target" in f else "n/a",
                ]
            )
    lines += ["## Searches\n", markdown_table(header, rows), "![Search reward per sample](search_rewards.png)\n"]
    lines.append("![Chosen ratio per group](chosen_ratios.png)\n")
    lines.append(f"{results['data']['attribution']}\n")
    return "\n".join(lines)


def plot_per_case(results: dict[str, Any], path: Path) -> Path:
    """Per-patient Dice of each region for every model (one line per patient across the models)."""
    fig, _ = new_figure((12, 4))
    fig.clear()
    axes = fig.subplots(1, len(REGION_DISPLAY_ORDER))
    models = results["models"]
    ids = list(models)
    cases = sorted({r["case"] for r in models[ids[0]]["per_patient"]})
    for ax, region in zip(axes, REGION_DISPLAY_ORDER):
        for case in cases:
            values = [
                next((r[f"{region}_dice"] for r in models[i]["per_patient"] if r["case"] == case), np.nan) for i in ids
            ]
            ax.plot(range(len(ids)), values, "o-", ms=3, lw=1, label=case)
        ax.set_xticks(
            range(len(ids)), [models[i]["label"].replace("baseline ", "") for i in ids], rotation=60, fontsize=6
        )
        ax.set_title(f"{region.upper()} Dice")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=5)
    fig.suptitle("per-patient Dice (mean over seeds)", fontsize=9)
    return save_figure(fig, path)


def plot_searches(results: dict[str, Any], rewards_path: Path, ratios_path: Path) -> tuple[Path, Path]:
    """Reward per sample of every search (one line per fold and arm) and the chosen ratio per group (mean, min-max
    over folds) of each learned arm."""
    fig, ax = new_figure((6, 4))
    learned = {i: m for i, m in results["models"].items() if m["allocation"] == "rl"}
    for model in learned.values():
        for f in model["per_fold"]:
            rewards = f["search"]["rewards"]
            best = [max(rewards[: k + 1]) for k in range(len(rewards))]
            ax.plot(range(1, len(rewards) + 1), rewards, ".", ms=3, alpha=0.5)
            label = f"{model['rl_cost']}, seed {f['seed']} fold {f['fold']} (best so far)"
            ax.plot(range(1, len(best) + 1), best, "-", lw=1, label=label)
            ax.plot([0], [f["search"]["uniform_reward"]], "k*", ms=5)
    ax.set_xlabel("sample (0, star: the uniform allocation at the target)")
    ax.set_ylabel("reward (teacher mask agreement)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=5)
    rewards_figure = save_figure(fig, rewards_path)
    fig, ax = new_figure((12, 4))
    for k, model in enumerate(learned.values()):
        chosen = [f["search"]["chosen"]["ratios"] for f in model["per_fold"]]
        groups = list(chosen[0])
        values = np.array([[c[g] for g in groups] for c in chosen])
        x = np.arange(len(groups)) + (k - (len(learned) - 1) / 2) * 0.35
        ax.errorbar(
            x,
            values.mean(0),
            yerr=[values.mean(0) - values.min(0), values.max(0) - values.mean(0)],
            fmt="o",
            ms=3,
            label=f"rl ({model['rl_cost']}), mean and range over folds",
        )
        ax.set_xticks(range(len(groups)), groups, rotation=90, fontsize=5)
    ratio = results["plan"]["compressed"][0]["ratio"]
    ax.axhline(ratio, color="k", ls="--", lw=1, label=f"uniform ({ratio})")
    ax.set_ylabel("fraction of channels removed")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return rewards_figure, save_figure(fig, ratios_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.study.allocation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--extra-training", type=Path, nargs="*", default=[])
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--results", type=Path, default=None, help="folder of results.json, report.md and figures")
    parser.add_argument("--folds", type=int, nargs="*", default=None, help="default: every fold of the plan")
    parser.add_argument("--seeds", type=int, nargs="*", default=None, help="default: every seed of the plan")
    args = parser.parse_args(argv)
    plan = load_plan(args.plan)
    study = Study(plan, args.data, args.workdir, args.extra_training)
    results = run_allocation_study(study, args.folds, args.seeds)
    out = args.results or args.workdir / "results"
    write_json(out / "results.json", results, indent=2)
    plot_per_case(results, out / "per_case_dice.png")
    plot_searches(results, out / "search_rewards.png", out / "chosen_ratios.png")
    write_text_atomic(out / "report.md", render_report(results))
    print(f"wrote {out / 'results.json'} and {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
