"""End-to-end latency of the shipped inference: NIfTI in, label map written, per variant x backend x option.

    python -m benchmarks.end_to_end --data ../shared/data/upenn_gbm --case UPENN-GBM-00002_11 \
        --bundle NAME=DIR [--bundle ...] [--backends torch onnxruntime ... auto] [--repeats 3] \
        [--crop-margin M] [--no-amx-child] [--json benchmarks/results/end_to_end_cpu.json]

Each row runs the bundle's own ``configs/inference.json`` (``monai.bundle.ConfigParser``, its ``evaluator``) on one
case: loading and checking the four modalities, z-scoring, slicing, the network, pasting, post-processing and
writing ``<case>_pred.nii.gz``. The evaluator is built once per row (models loaded and compiled), run once to
warm up, then timed ``--repeats`` times (wall clock of ``evaluator.run()``, ``num_workers`` 0 so that all work is
in the timed process). Options: ``full`` (every slice, whole grid), ``skip`` (slices without brain not run),
``crop`` (skip + each slice cropped to its brain box plus ``--crop-margin`` pixels, default the bundle's
``crop_margin``), and ``default`` (the bundle as shipped: ``backend: auto`` and its default options). The full
option runs every backend; ``skip`` and ``crop`` run torch and the variant's fastest backend, on every bundle but
the first (the reference, whose torch ``full`` row every speed-up divides).

Per row: the written label map's WT/TC/ET Dice against the same variant's torch ``full`` map (what a backend or
option changes), against its torch map with the same options when that row exists (``agreement_same_options``:
what the backend alone changes, the targets' agreement with its own FP32 output) and against the case's label
(accuracy, only meaningful when the case is a held-out patient of that bundle's training). The peer, MONAI
SegResNet in the model-zoo ``brats_mri_segmentation`` configuration (random weights: its cost, not its accuracy),
runs the same way: the same loading and normalisation, 3-D ``SlidingWindowInferer((240, 240, 160), overlap 0.5)``,
sigmoid > 0.5, the label map written.

``--amx-child`` (default on where the CPU has AMX) repeats the default rows and the OpenVINO/ONNX Runtime rows of
the last bundle in a child process with ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI`` (oneDNN, used by PyTorch and
OpenVINO, then uses neither AMX nor AVX512-BF16: what a CPU without them gives; ONNX Runtime's MLAS kernels do not
read it). Writes the JSON (every time, the machine, CPU flags) and a PNG beside it; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NO_AMX_ISA = "AVX512_CORE_VNNI"
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "end_to_end_cpu.json"
OPTIONS = {
    "full": {"skip_empty_slices": False, "crop_to_brain": False},
    "skip": {"skip_empty_slices": True, "crop_to_brain": False},
    "crop": {"skip_empty_slices": True, "crop_to_brain": True},
    "default": {},
}
ALL_BACKENDS = ("torch", "onnxruntime", "onnxruntime_int8", "openvino", "openvino_bf16", "openvino_int8")


def _regions(path: Path):
    """(3, H, W, D) bool TC/WT/ET of a BraTS label map file."""
    import nibabel as nib
    import numpy as np

    labels = np.asarray(nib.load(str(path)).dataobj)
    return np.stack([np.isin(labels, (1, 3, 4)), np.isin(labels, (1, 2, 3, 4)), labels == 4])


def _dice(a, b) -> dict[str, float]:
    out = {}
    for i, region in enumerate(("tc", "wt", "et")):
        total = int(a[i].sum()) + int(b[i].sum())
        out[f"{region}_dice"] = 1.0 if total == 0 else 2.0 * int((a[i] & b[i]).sum()) / total
    return out


def _spread(times: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "times": times}


def _bundle_evaluator(bundle: Path, overrides: dict[str, Any]):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(bundle), "num_workers": 0, "overwrite": True, **overrides})
    evaluator = parser.get_parsed_content("evaluator")
    return evaluator, parser.get_parsed_content("backend_choice"), parser.get_parsed_content("crop_margin")


def run_row(bundle: Path, backend: str, option: str, data: Path, datalist: Path, out: Path, repeats: int, margin):
    """Build, warm up and time one row; returns its record (times in s, the backend that ran)."""
    overrides: dict[str, Any] = {"dataset_dir": str(data), "data_list_file_path": str(datalist), "output_dir": str(out)}
    overrides.update(OPTIONS[option])
    if option != "default":
        overrides["backend"] = backend
    if option == "crop" and margin is not None:
        overrides["crop_margin"] = int(margin)
    build = time.perf_counter()
    evaluator, chosen, crop_margin = _bundle_evaluator(bundle, overrides)
    build = time.perf_counter() - build
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        evaluator.run()
        times.append(time.perf_counter() - start)
    inferer = evaluator.inferer
    return {
        "backend": chosen,
        "option": option,
        "build_s": build,
        "first_run_s": times[0],
        "seconds": _spread(times[1:]),
        "crop_margin": crop_margin if inferer.crop_to_brain else None,
        "ran_options": "crop" if inferer.crop_to_brain else "skip" if inferer.skip_empty_slices else "full",
        "slices_run": inferer.last_stats.get("slices_run"),
        "pixels_run_fraction": inferer.last_stats.get("pixels_run_fraction"),
    }


def run_segresnet(data: Path, entry: dict[str, Any], out: Path, repeats: int) -> dict[str, Any]:
    """The zoo SegResNet through the same load/normalise/write path; random weights."""
    import torch
    from monai.inferers import SlidingWindowInferer
    from monai.networks.nets import SegResNet
    from monai.transforms import Compose, EnsureTyped, NormalizeIntensityd, SaveImage

    from custom_modules.transforms import LoadCased
    from custom_modules.transforms.label_map import regions_to_brats_labels

    torch.manual_seed(0)
    net = SegResNet(
        blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], init_filters=16, in_channels=4, out_channels=3, dropout_prob=0.2
    ).eval()
    load = Compose(
        [
            LoadCased("image"),
            EnsureTyped("image", dtype=torch.float32),
            NormalizeIntensityd("image", nonzero=True, channel_wise=True),
        ]
    )
    inferer = SlidingWindowInferer(roi_size=(240, 240, 160), sw_batch_size=1, overlap=0.5)
    saver = SaveImage(
        output_dir=str(out),
        output_postfix="segresnet",
        separate_folder=False,
        output_dtype="uint8",
        resample=False,
        print_log=False,
    )
    images = [str(data / p) for p in entry["image"]]

    def once() -> None:
        image = load({"image": images})["image"]
        with torch.no_grad():
            logits = torch.as_tensor(inferer(image[None], net))[0]  # (3, H, W, D); the geometry is the image's
        saver(regions_to_brats_labels(torch.sigmoid(logits) > 0.5), meta_data=image.meta)

    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return {"first_run_s": times[0], "seconds": _spread(times[1:]), "params": sum(p.numel() for p in net.parameters())}


def kernel_efficiency(bundle: Path, repeats: int) -> dict[str, Any]:
    """GFLOP/s of the FP32 backends on a batch of 8 4x240x240 slices against a 2048x2048 float32 matmul, all in this
    process (median of ``repeats`` after one warm-up each)."""
    import torch

    from custom_modules.inference import backend_network
    from custom_modules.networks.complexity import count_flops
    from raagr2_tools.authoring.config import bundle_network
    from raagr2_tools.shipping.backend_timing import time_backends

    from .deploy_measure import matmul_gflops

    net = bundle_network(bundle).eval()
    flops = count_flops(net, (1, 4, 240, 240))
    batch = torch.randn(8, 4, 240, 240, generator=torch.Generator().manual_seed(0))
    matmul = matmul_gflops(2048, 5, torch.device("cpu"))
    out: dict[str, Any] = {"gflops_per_slice": flops / 1e9, "matmul": matmul, "backends": {}}
    runners = {}
    for backend in ("torch", "onnxruntime", "openvino"):
        try:
            runners[backend] = backend_network(backend, net, bundle, "cpu")
        except (FileNotFoundError, OSError) as e:
            out["backends"][backend] = {"error": str(e)}
    timed = time_backends(runners, batch, repeats=repeats)["backends"]
    for backend, timing in timed.items():
        rate = flops / 1e9 / (timing["ms_per_slice"] / 1e3)
        out["backends"][backend] = {
            "s_per_slice": _spread([ms / 1e3 for ms in timing["times_ms"]]),
            "gflop_per_s": rate,
            "of_matmul": rate / matmul["gflops"],
        }
    return out


def measure(
    args: argparse.Namespace, bundles: list[tuple[str, Path]], backends: list[str], only_fast: bool
) -> dict[str, Any]:
    """Every row for ``bundles`` in this process (``only_fast``: the default row and the exported FP32/INT8/BF16
    rows of the last bundle, for the no-AMX child)."""
    from data_prep.prepare import prepare_datalist

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="end_to_end_") as tmp:
        content = prepare_datalist(args.data, Path(tmp) / "all.json", all_test=True)
        entries = [e for e in content["test"] if e["case_id"] == args.case]
        if not entries:
            raise SystemExit(f"error: {args.data}: no case {args.case!r}")
        datalist = Path(tmp) / "one.json"
        datalist.write_text(json.dumps({"test": entries}))
        label = args.data / entries[0]["label"] if entries[0].get("label") else None
        segresnet = (  # first: every SegResNet ratio needs it, and it fails fast if it fails
            None
            if only_fast or args.no_segresnet
            else run_segresnet(args.data, entries[0], Path(tmp) / "segresnet", args.repeats)
        )
        for index, (variant, bundle) in enumerate(bundles[-1:] if only_fast else bundles):
            record_path = bundle / "models" / "backends.json"
            timed = json.loads(record_path.read_text())["backends"] if record_path.is_file() else {}
            present = [b for b in backends if b == "torch" or b in timed]
            checked = [b for b in present if b in timed and timed[b]["check"]["passed"]]
            fastest = min((timed[b]["ms_per_slice"], b) for b in checked)[1] if checked else "torch"
            if only_fast:
                plan = [("full", b) for b in present if b != "torch"]
            else:  # torch full first: the reference of the variant's agreement column
                plan = [("full", b) for b in present]
                if index > 0:  # the options on the compressed bundles (the reference needs only its full rows)
                    plan += [(o, b) for o in ("skip", "crop") for b in dict.fromkeys(["torch", fastest])]
            plan.append(("default", "auto"))
            reference = None
            torch_maps: dict[str, Any] = {}  # option -> the variant's torch label map (regions) with those options
            for option, backend in plan:
                out = Path(tmp) / f"{variant}_{backend}_{option}"
                print(f"{variant} / {backend} / {option}", file=sys.stderr, flush=True)
                row = {
                    "variant": variant,
                    **run_row(bundle, backend, option, args.data, datalist, out, args.repeats, args.crop_margin),
                }
                written = next(out.glob("*_pred.nii.gz"))
                regions = _regions(written)
                if option == "full" and backend == "torch":
                    reference = regions
                if backend == "torch":
                    torch_maps[row["ran_options"]] = regions
                if reference is not None:
                    row["agreement"] = _dice(regions, reference)
                if row["ran_options"] in torch_maps:  # what the backend alone changes (the options held equal)
                    row["agreement_same_options"] = _dice(regions, torch_maps[row["ran_options"]])
                if label is not None:
                    row["dice_vs_label"] = _dice(regions, _regions(label))
                rows.append(row)
                print(f"  {row['seconds']['median']:.2f} s ({row['backend']})", file=sys.stderr, flush=True)
    return {"rows": rows, "segresnet": segresnet}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.end_to_end", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--case", required=True, help="case id in --data (a held-out patient of the bundles)")
    parser.add_argument("--bundle", action="append", required=True, help="NAME=DIR (first: the reference)")
    parser.add_argument("--backends", nargs="+", default=list(ALL_BACKENDS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--crop-margin", type=int, default=None)
    parser.add_argument("--no-segresnet", action="store_true")
    parser.add_argument("--amx-child", choices=("auto", "yes", "no"), default="auto")
    parser.add_argument("--child-json", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    bundles = [(b.split("=", 1)[0], Path(b.split("=", 1)[1]).resolve()) for b in args.bundle]
    if args.child_json is not None:  # the no-AMX child
        result = measure(args, bundles, args.backends, only_fast=True)
        args.child_json.write_text(json.dumps(result))
        return 0

    import torch

    from custom_modules.files import write_json
    from custom_modules.hardware import cpu_flags

    from .end_to_end_report import plot, render
    from .machine import machine_description

    start = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "end_to_end",
        "command": "python -m benchmarks.end_to_end " + " ".join(sys.argv[1:] if argv is None else argv),
        "case": args.case,
        "bundles": {name: str(path) for name, path in bundles},
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "machine": machine_description("cpu"),
    }
    result.update(measure(args, bundles, args.backends, only_fast=False))
    result["kernel_efficiency"] = kernel_efficiency(bundles[0][1], args.repeats)
    amx = "amx_bf16" in cpu_flags()
    if args.amx_child == "yes" or (args.amx_child == "auto" and amx):
        with tempfile.TemporaryDirectory() as tmp:
            child_json = Path(tmp) / "child.json"
            command = [sys.executable, "-m", "benchmarks.end_to_end", *(argv if argv is not None else sys.argv[1:])]
            command += ["--child-json", str(child_json)]
            env = {**os.environ, "ONEDNN_MAX_CPU_ISA": NO_AMX_ISA}
            subprocess.run(command, env=env, check=True)
            result["no_amx"] = {"ONEDNN_MAX_CPU_ISA": NO_AMX_ISA, **json.loads(child_json.read_text())}
    result["wall_time_s"] = time.perf_counter() - start
    result["markdown"] = render(result)
    write_json(args.json, result, indent=2)
    plot(result, args.json.with_suffix(".png"))
    print(result["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
