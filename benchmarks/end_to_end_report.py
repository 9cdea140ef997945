"""Tables, target checks and the figure of ``benchmarks.end_to_end`` results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raagr2_tools.reports.tables import markdown_table

__all__ = ["plot", "render", "targets"]

REGIONS = ("wt", "tc", "et")
#: the issue's targets: speed-up of a compressed bundle's default inference over the baseline in PyTorch FP32, and
#: over SegResNet; its mask agreement with its own FP32 output; its Dice loss against the FP32 teacher (points)
TARGETS = {"speedup_vs_baseline": 40.0, "speedup_vs_segresnet": 5.0, "agreement": 0.99, "dice_points": 1.0}


def _time(entry: dict[str, Any]) -> str:
    return f"{entry['median']:.2f} [{entry['min']:.2f}, {entry['max']:.2f}]"


def _regions(values: dict[str, float] | None, fmt: str = "{:.3f}") -> str:
    if not values:
        return "n/a"
    return " / ".join(fmt.format(values[f"{r}_dice"]) for r in REGIONS)


def _reference(result: dict[str, Any]) -> dict[str, Any]:
    first = next(iter(result["bundles"]))
    return next(
        r for r in result["rows"] if r["variant"] == first and r["backend"] == "torch" and r["option"] == "full"
    )


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per compressed bundle (all but the first): its default row against each target."""
    reference = _reference(result)
    ref_s = reference["seconds"]["median"]
    seg_s = result["segresnet"]["seconds"]["median"] if result.get("segresnet") else None
    out = []
    for variant in list(result["bundles"])[1:]:
        row = next(r for r in result["rows"] if r["variant"] == variant and r["option"] == "default")
        s = row["seconds"]["median"]
        fp32 = row.get("agreement_same_options") or row.get("agreement")  # the same options when measured
        agreement = min(fp32.values()) if fp32 else None
        teacher, own = reference.get("dice_vs_label"), row.get("dice_vs_label")
        drop = max(100 * (teacher[k] - own[k]) for k in teacher) if teacher and own else None
        out.append(
            {
                "variant": variant,
                "backend": row["backend"],
                "seconds": s,
                "speedup_vs_baseline": ref_s / s,
                "speedup_vs_segresnet": seg_s / s if seg_s else None,
                "min_agreement_vs_own_fp32": agreement,
                "max_dice_drop_vs_teacher_points": drop,
                "met": {
                    "speedup_vs_baseline": ref_s / s >= TARGETS["speedup_vs_baseline"],
                    "speedup_vs_segresnet": bool(seg_s) and seg_s / s >= TARGETS["speedup_vs_segresnet"],
                    "agreement": agreement is not None and agreement >= TARGETS["agreement"],
                    "dice_points": drop is not None and drop <= TARGETS["dice_points"],
                },
            }
        )
    return out


def _rows_table(rows: list[dict[str, Any]], ref_s: float, seg_s: float | None) -> str:
    header = [
        "variant",
        "backend",
        "option",
        "end to end (s), median [min, max]",
        "speed-up vs baseline torch full",
        "vs SegResNet",
        "slices run",
        "pixels run",
        "agreement WT / TC / ET vs own torch full",
        "Dice WT / TC / ET vs label",
    ]
    table = []
    for r in rows:
        s = r["seconds"]["median"]
        option = r["option"] + (f" (margin {r['crop_margin']})" if r.get("crop_margin") is not None else "")
        table.append(
            [
                r["variant"],
                r["backend"],
                option,
                _time(r["seconds"]),
                f"{ref_s / s:.2f}x",
                f"{seg_s / s:.2f}x" if seg_s else "n/a",
                str(r.get("slices_run")),
                f"{100 * r['pixels_run_fraction']:.0f} %" if r.get("pixels_run_fraction") is not None else "n/a",
                _regions(r.get("agreement"), "{:.4f}"),
                _regions(r.get("dice_vs_label")),
            ]
        )
    return markdown_table(header, table)


def render(result: dict[str, Any]) -> str:
    """The Markdown: every row, SegResNet, the no-AMX rows, kernel efficiency and the targets."""
    ref_s = _reference(result)["seconds"]["median"]
    seg = result.get("segresnet")
    seg_s = seg["seconds"]["median"] if seg else None
    machine = result["machine"]
    lines = [
        f"Case {result['case']}; {result['repeats']} timed runs per row after one warm-up; "
        f"{result['threads']} threads; {machine['cpu_model']} ({machine['cpu_cores_usable']} usable cores), "
        f"flags {', '.join(machine['cpu_flags'])}.",
        "",
        _rows_table(result["rows"], ref_s, seg_s).rstrip("\n"),
    ]
    if seg:
        lines += [
            "",
            f"SegResNet (zoo configuration, random weights, {seg['params']:,} parameters), same load/normalise/write: "
            f"{_time(seg['seconds'])} s.",
        ]
    no_amx = result.get("no_amx")
    if no_amx:
        lines += [
            "",
            f"Without AMX and AVX512-BF16 (`ONEDNN_MAX_CPU_ISA={no_amx['ONEDNN_MAX_CPU_ISA']}`, "
            "same machine, child process):",
            "",
            _rows_table(no_amx["rows"], ref_s, seg_s).rstrip("\n"),
        ]
    kernel = result.get("kernel_efficiency")
    if kernel:
        lines += [
            "",
            f"Kernel efficiency of the first bundle ({kernel['gflops_per_slice']:.2f} GFLOP per 4x240x240 slice), "
            f"matmul reference {kernel['matmul']['gflops']:.1f} GFLOP/s (2048x2048 float32, same process):",
            "",
        ]
        table = [
            [
                name,
                _time(b["s_per_slice"]) if "s_per_slice" in b else "n/a",
                f"{b['gflop_per_s']:.1f}" if "gflop_per_s" in b else "n/a",
                f"{100 * b['of_matmul']:.0f} %" if "of_matmul" in b else b.get("error", ""),
            ]
            for name, b in kernel["backends"].items()
        ]
        lines.append(markdown_table(["backend", "s per slice (batch 8)", "GFLOP/s", "of matmul"], table).rstrip("\n"))
    checks = targets(result)
    if checks:
        lines += ["", "Targets (default inference of each compressed bundle):", ""]
        table = [
            [
                t["variant"],
                t["backend"],
                f"{t['seconds']:.2f}",
                f"{t['speedup_vs_baseline']:.1f}x ({'met' if t['met']['speedup_vs_baseline'] else 'not met'}, >= 40x)",
                f"{t['speedup_vs_segresnet']:.1f}x ({'met' if t['met']['speedup_vs_segresnet'] else 'not met'}, >= 5x)"
                if t["speedup_vs_segresnet"]
                else "n/a",
                f"{t['min_agreement_vs_own_fp32']:.4f} ({'met' if t['met']['agreement'] else 'not met'}, >= 0.99)"
                if t["min_agreement_vs_own_fp32"] is not None
                else "n/a",
                f"{t['max_dice_drop_vs_teacher_points']:+.1f} ({'met' if t['met']['dice_points'] else 'not met'}, <= 1)"
                if t["max_dice_drop_vs_teacher_points"] is not None
                else "n/a",
            ]
            for t in checks
        ]
        header = [
            "variant",
            "ran",
            "s",
            "vs baseline torch",
            "vs SegResNet",
            "min agreement vs own FP32",
            "worst Dice drop vs teacher (points, this case)",
        ]
        lines.append(markdown_table(header, table).rstrip("\n"))
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Horizontal bars of the end-to-end medians (log scale) with min-max whiskers; SegResNet as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"] + [
        {**r, "variant": r["variant"] + " (no AMX)"} for r in (result.get("no_amx") or {}).get("rows", [])
    ]
    labels = [f"{r['variant']} / {r['backend']} / {r['option']}" for r in rows]
    medians = [r["seconds"]["median"] for r in rows]
    errors = [
        [m - r["seconds"]["min"] for m, r in zip(medians, rows)],
        [r["seconds"]["max"] - m for m, r in zip(medians, rows)],
    ]
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(rows) + 1.5))
    ax.barh(range(len(rows)), medians, xerr=errors, color="C0")
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("seconds per volume, NIfTI in to label map written (median, min-max)")
    if result.get("segresnet"):
        ax.axvline(result["segresnet"]["seconds"]["median"], color="C3", ls="--", label="SegResNet")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
