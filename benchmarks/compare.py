"""Compare bundle variants (and MONAI SegResNet as the peer) in one run, each in a fresh child process.

    python -m benchmarks.compare [--bundles DIR ...] [--out benchmarks/results/NAME.json]
                                 [--device cpu|cuda] [--tiny] [--no-segresnet] [--threads N]

The first bundle is the reference for the ratios. Prints two Markdown tables (quantities, ratios), writes
the JSON (all raw numbers, settings, machine) and a PNG bar chart with the same stem next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from custom_modules.files import write_json
from custom_modules.networks.complexity import FLOP_COUNTER

from .machine import REPO_ROOT, machine_description
from .report import compute_ratios, plot_ratios, render_tables
from .settings import BenchSettings, add_settings_args, settings_from_args

__all__ = ["DEFAULT_BUNDLES", "run_child", "compare", "main"]

DEFAULT_BUNDLES = (REPO_ROOT / "bundles" / "raagr2_baseline", REPO_ROOT / "bundles" / "raagr2_shared_depthwise")
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "latest.json"


def run_child(args: list[str], settings: BenchSettings, workdir: Path, name: str) -> dict[str, Any]:
    """Run ``python -m benchmarks.measure ARGS`` in a fresh process; return its JSON (or an ``error`` entry)."""
    out = workdir / f"{len(list(workdir.iterdir()))}.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "benchmarks.measure", *args, "--name", name, "--json", str(out), *settings.to_cli()]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not out.is_file():
        print(f"  [{name}] FAILED (exit code {proc.returncode})", flush=True)
        return {"name": name, "error": f"exit code {proc.returncode}", "child_wall_s": wall}
    result = json.loads(out.read_text())
    result["child_wall_s"] = wall
    return result


def unique_names(bundles: list[Path]) -> list[str]:
    names: list[str] = []
    for b in bundles:
        name, k = b.name, 2
        while name in names:
            name, k = f"{b.name}#{k}", k + 1
        names.append(name)
    return names


def compare(bundles: list[Path], settings: BenchSettings, segresnet: bool = True) -> dict[str, Any]:
    """Measure every bundle (then SegResNet) in its own child process; the first bundle is the reference."""
    start = time.perf_counter()
    names = unique_names(bundles)
    total = len(bundles) + int(segresnet)
    variants = []
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        for i, (bundle, name) in enumerate(zip(bundles, names), start=1):
            print(f"[{i}/{total}] {name}: fresh process ({bundle})", flush=True)
            variants.append(run_child(["--bundle", str(bundle)], settings, Path(tmp), name))
        if segresnet:
            name = "SegResNet (brats_mri_segmentation)"
            print(f"[{total}/{total}] {name}: fresh process (random weights)", flush=True)
            variants.append(run_child(["--segresnet"], settings, Path(tmp), name))
    ok = [v for v in variants if not v.get("error")]
    reference = variants[0]
    ratios = compute_ratios(ok, reference) if not reference.get("error") else {}
    return {
        "benchmark": "benchmarks.compare",
        "reference": reference["name"],
        "flop_counter": FLOP_COUNTER,
        "settings": settings.to_dict(),
        "machine": machine_description(settings.device),
        "variants": variants,
        "ratios": ratios,
        "wall_time_s": time.perf_counter() - start,
    }


def select_bundles(requested: Sequence[Path] | None, parser: argparse.ArgumentParser) -> list[Path]:
    """The bundles to measure: ``requested`` (each must have ``configs/inference.json``; else a parser error), or
    the default bundles that exist (a note names each one skipped)."""
    if requested is None:
        bundles = []
        for b in DEFAULT_BUNDLES:
            if (b / "configs" / "inference.json").is_file():
                bundles.append(b)
            else:
                print(f"note: default bundle {b} (configs/inference.json) does not exist; skipped", flush=True)
    else:
        bundles = [b.resolve() for b in requested]
        missing = [str(b) for b in bundles if not (b / "configs" / "inference.json").is_file()]
        if missing:
            parser.error(f"no configs/inference.json in: {', '.join(missing)}")
    if not bundles:
        parser.error("no bundle to measure")
    return bundles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--bundles", type=Path, nargs="+", default=None, help="bundle folders; the first is the reference"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="result JSON (the PNG goes next to it)")
    parser.add_argument("--no-segresnet", action="store_true", help="skip the SegResNet peer")
    add_settings_args(parser)
    args = parser.parse_args(argv)
    settings = settings_from_args(args)

    bundles = select_bundles(args.bundles, parser)

    mode = "tiny" if settings.tiny else "default"
    peer = " + SegResNet" if not args.no_segresnet else ""
    what = f"{len(bundles)} bundle(s){peer}, each in a fresh process"
    print(f"benchmark ({mode} mode, {settings.device}): {what}", flush=True)
    result = compare(bundles, settings, segresnet=not args.no_segresnet)
    if not result["ratios"]:
        print(f"reference {result['reference']} failed; no ratios", flush=True)
    result["markdown"] = render_tables(result)
    print()
    print(result["markdown"], flush=True)

    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result, indent=2)
    png = plot_ratios(result, out.with_suffix(".png")) if result["ratios"] else None
    print(f"wrote {out}" + (f" and {png}" if png else "") + f" (total {result['wall_time_s']:.0f} s)", flush=True)
    return 1 if any(v.get("error") for v in result["variants"]) else 0


if __name__ == "__main__":
    sys.exit(main())
