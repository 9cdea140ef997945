"""Train several bundles on the same phantoms with the same seed and budget; compare per-region accuracy.

Usage::

    python -m benchmarks.compare_training \\
        --bundles bundles/raagr2_baseline bundles/raagr2_shared_depthwise --out benchmarks/results/training_phantoms

Each bundle runs the main job (``raagr2_tools.jobs.main_job``) in ``<out>/<bundle>/`` on identical
data (same ``--cases``, ``--seed``, ``--epochs``); the comparison is written to ``<out>/comparison.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from custom_modules.constants import REGION_DISPLAY_ORDER as REGIONS
from custom_modules.files import write_json, write_text_atomic
from raagr2_tools.jobs.main_job import PHANTOM_DATA_KEY, PHANTOM_SETTINGS, load_settings
from raagr2_tools.jobs.main_job import main as run_main_job
from raagr2_tools.reports import new_figure, quantity_table, save_figure

from .machine import REPO_ROOT


def plot_comparison(reports: dict[str, dict[str, Any]], path: Path) -> Path:
    """Grouped bars: mean Dice per region and bundle, with the standard deviation over test cases."""
    fig, ax = new_figure((6, 4))
    width = 0.8 / len(reports)
    for i, (name, report) in enumerate(reports.items()):
        means = [report["regions"][f"{r}_dice"]["mean"] for r in REGIONS]
        stds = [report["regions"][f"{r}_dice"]["std"] for r in REGIONS]
        xs = [x + i * width for x in range(len(REGIONS))]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(REGIONS))], [r.upper() for r in REGIONS])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("Dice per test case (mean ± sd)")
    ax.set_title("Same phantoms, seed and budget")
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", nargs="+", type=Path, required=True, help="bundle folders; first = reference")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "training_comparison")
    parser.add_argument("--cases", type=int, default=None, help="phantoms (default: the main job's overlay, 20)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: the main job's overlay, 15)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    phantom = load_settings(PHANTOM_SETTINGS)
    args.cases = args.cases or int(phantom[PHANTOM_DATA_KEY]["cases"])
    args.epochs = args.epochs or int(phantom["epochs"])

    reports = {}
    for bundle in args.bundles:
        print(f"=== {bundle.name}: main job, {args.epochs} epochs, {args.cases} phantoms, seed {args.seed}", flush=True)
        reports[bundle.name] = run_main_job(
            [
                "--bundle",
                str(bundle),
                "--workdir",
                str(args.out / bundle.name),
                "--cases",
                str(args.cases),
                "--epochs",
                str(args.epochs),
                "--seed",
                str(args.seed),
            ]
        )
    reference = reports[args.bundles[0].name]
    rows = []
    for name, report in reports.items():
        for region in REGIONS:
            dice = report["regions"][f"{region}_dice"]
            delta = dice["mean"] - reference["regions"][f"{region}_dice"]["mean"]
            rows.append((f"{name} {region.upper()} Dice", f"{dice['mean']:.4f} ± {dice['std']:.4f} ({delta:+.4f})"))
        rows.append(
            (f"{name} HD95 mm WT/TC/ET", " / ".join(f"{report['regions'][f'{r}_hd95']['mean']:.2f}" for r in REGIONS))
        )
        rows.append((f"{name} parameters (3 outputs)", f"{report['parameters_bundle_3ch']:,}"))
        rows.append((f"{name} training time", f"{report['train_seconds']:.0f} s"))
    title = f"Training comparison on phantoms (seed {args.seed}, {args.epochs} epochs, {args.cases} cases)"
    table = quantity_table(rows, title)
    png = plot_comparison(reports, args.out / "comparison.png")
    write_text_atomic(args.out / "comparison.md", table + f"\n![per-region Dice]({png.name})\n")
    settings = vars(args) | {"bundles": [str(b) for b in args.bundles], "out": str(args.out)}
    write_json(args.out / "comparison.json", {"settings": settings, "reports": reports}, indent=2)
    print("\n" + table)
    return reports


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (OSError, RuntimeError, ValueError) as e:
        print(f"training comparison failed: {e}", file=sys.stderr)
        sys.exit(1)
