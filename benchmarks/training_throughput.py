"""Training throughput at BraTS scale: slices/s of the baseline bundle's data pipeline against steps/s of its
network, and which of the two bounds an epoch.

    python -m benchmarks.training_throughput --cases N --out benchmarks/results/training_throughput_cpu.json \
        [--device cpu|cuda] [--workdir DIR] [--threads N] [--repeats 3] [--num-workers W] [--steps 3] \
        [--note TEXT] [--tiny]

1. **Cases**: ``N`` synthetic full-size (240x240x155) 4-modality phantoms with labels from
   :mod:`data_prep.synthetic`, in the BraTS 2018-2021 layout under ``--workdir`` (default
   ``$TMPDIR/raagr2_training_throughput``, never inside the repository), and a datalist with all of them in
   ``training``. An existing phantom folder holding all ``N`` cases is reused; otherwise synthetic (re)writes
   the ``N`` cases (they are deterministic, case ``i`` from seed ``[0, i]``).
2. **Data pipeline** (no network): the baseline bundle's own ``train#dataloader`` (``configs/train.json``
   parsed with ``monai.bundle.ConfigParser``, only ``dataset_dir``, ``data_list_file_path``, ``num_workers`` and
   the cache keys overridden) iterated for whole epochs; slices/s = training slices yielded / wall time. Three
   pipelines, interleaved per repeat so that drift hits all alike:
   ``current``: no cache, workers restarted every epoch (the bundle before the cache: every case is read,
   decompressed and normalised on every visit); ``cached, first epoch``: a fresh cache folder, the epoch that
   builds it (``cache`` true, persistent workers); ``cached, later epoch``: the next epoch on the same loader.
3. **Network** (no data pipeline): forward + the bundle's loss + backward + Adam step on random batches of the
   bundle's batch shape (``cases_per_batch * slices_per_case`` slices of 4 x ``roi_size``), in float32 and in
   mixed precision as the bundle does it: ``cpu_bf16`` (bfloat16 autocast, when the CPU has native bfloat16) on
   CPU, ``amp`` (float16 autocast and a gradient scaler, as MONAI's trainer) on CUDA.
4. **Bound**: per pipeline and precision, ratio = data slices/s / network slices/s; below 1 the data pipeline
   bounds the epoch, otherwise the network does. A GPU run keeps its accelerator busy when the ratio is >= 1.5.

Every measurement is repeated ``--repeats`` times (median, min, max and all values in the JSON). The JSON holds
the settings, ``N``, the machine (CPU model and flags, :func:`benchmarks.machine.machine_description`), the load
average before and after (other processes slow every number) and the printed Markdown; it is written atomically.
``--tiny`` (3 cases of 32x32x16, a narrow network, seconds) is the test mode; its numbers say nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.utils import set_determinism

from custom_modules.files import write_json
from custom_modules.networks.autocast import cpu_supports_bf16
from data_prep.synthetic import MANIFEST, phantom_files, write_phantom_dataset
from raagr2_tools.reports.tables import markdown_table

from .machine import machine_description
from .timing import synchronize, time_repeats

__all__ = ["ensure_phantoms", "main", "measure_data", "measure_network", "run"]

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_CONFIG = REPO_ROOT / "bundles" / "raagr2_baseline" / "configs" / "train.json"
TINY_CONFIG = Path(__file__).resolve().parent / "configs" / "tiny.json"
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "raagr2_training_throughput"
FULL_SHAPE = (240, 240, 155)
TINY_SHAPE = (32, 32, 16)
#: ratio of data to network throughput a GPU run needs so that the accelerator never waits for data
GPU_HEADROOM = 1.5
SEED = 0

#: the data pipelines measured: name -> what it is
PIPELINES = {
    "current": "no cache: every case read, decompressed and normalised on every visit; workers restarted per epoch",
    "cached_first_epoch": "cache true: the epoch that builds the disk cache (fresh cache folder), persistent workers",
    "cached": "cache true: a later epoch, everything before the first random transform read from the disk cache",
}
PIPELINE_LABELS = {
    "current": "current (no cache)",
    "cached_first_epoch": "cached, first epoch (builds the cache)",
    "cached": "cached, later epoch",
}


def _spread(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}


def ensure_phantoms(folder: Path, cases: int, shape: tuple[int, int, int], seed: int = SEED) -> dict[str, Any]:
    """``cases`` phantoms of ``shape`` in ``folder`` (reused when all are there, else written by synthetic).

    Returns ``{"folder", "generated", "generation_s"}``.
    """
    plan = phantom_files(cases)
    complete = (folder / MANIFEST).is_file() and all((folder / rel).is_file() for rels in plan.values() for rel in rels)
    if complete:
        return {"folder": str(folder), "generated": 0, "generation_s": 0.0}
    print(f"writing {cases} phantoms of {'x'.join(map(str, shape))} to {folder} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    write_phantom_dataset(folder, cases, seed=seed, shape=shape)
    return {"folder": str(folder), "generated": cases, "generation_s": time.perf_counter() - start}


def write_datalist(path: Path, cases: int) -> Path:
    """A datalist with the first ``cases`` phantoms in ``training`` (paths relative to the phantom folder;
    channel order T1c, T1, T2, FLAIR as :data:`custom_modules.constants.MODALITY_ORDER`)."""
    entries = [
        {"case_id": case_id, "image": rels[:4], "label": rels[4]} for case_id, rels in phantom_files(cases).items()
    ]
    return write_json(path, {"training": entries, "validation": []}, indent=2)


def bundle_parser(overrides: dict[str, Any]) -> ConfigParser:
    """The baseline bundle's ``train.json`` with ``overrides`` (MONAI ids) applied."""
    parser = ConfigParser()
    parser.read_config(TRAIN_CONFIG)
    for key, value in overrides.items():
        parser[key] = value
    return parser


def _epoch(loader: Any) -> tuple[float, int, int]:
    """Iterate ``loader`` once: (seconds, slices, batches)."""
    slices = batches = 0
    start = time.perf_counter()
    for batch in loader:
        slices += int(batch["image"].shape[0])
        batches += 1
    return time.perf_counter() - start, slices, batches


def _folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20 if folder.is_dir() else 0.0


def measure_data(base: dict[str, Any], cases: int, repeats: int, cache_dir: Path, log: Callable[[str], None]):
    """Slices/s of the bundle's ``train#dataloader`` for :data:`PIPELINES`, ``repeats`` interleaved epochs each."""
    times: dict[str, list[float]] = {name: [] for name in PIPELINES}
    slices: dict[str, int] = {}
    cache_mib = 0.0
    set_determinism(seed=SEED)
    current = bundle_parser(
        {**base, "cache": False, "cache_rate": 0.0, "train#dataloader#persistent_workers": False}
    ).get_parsed_content("train#dataloader")
    for repeat in range(repeats):
        seconds, n, _ = _epoch(current)
        times["current"].append(seconds)
        slices["current"] = n
        log(f"data repeat {repeat + 1}/{repeats}: current {seconds:.1f} s ({n / seconds:.2f} slices/s)")
        shutil.rmtree(cache_dir, ignore_errors=True)
        set_determinism(seed=SEED)
        loader = bundle_parser(
            {**base, "cache": True, "cache_rate": 0.0, "cache_dir": str(cache_dir)}
        ).get_parsed_content("train#dataloader")
        for name in ("cached_first_epoch", "cached"):
            seconds, n, _ = _epoch(loader)
            times[name].append(seconds)
            slices[name] = n
            log(f"data repeat {repeat + 1}/{repeats}: {name} {seconds:.1f} s ({n / seconds:.2f} slices/s)")
        cache_mib = _folder_mib(cache_dir)
        del loader
        gc.collect()
    set_determinism(seed=None)
    shutil.rmtree(cache_dir, ignore_errors=True)
    result: dict[str, Any] = {}
    for name, description in PIPELINES.items():
        result[name] = {
            "description": description,
            "slices_per_epoch": slices[name],
            "epoch_s": _spread(times[name]),
            "slices_per_s": _spread([slices[name] / t for t in times[name]]),
            "cases_per_s": _spread([cases / t for t in times[name]]),
        }
    result["cache_mib"] = cache_mib
    result["cache_mib_per_case"] = cache_mib / cases
    return result


def _precisions(device: torch.device) -> list[str]:
    """``fp32``, and the bundle's mixed precision where this device has it (``bf16`` on CPU, ``amp`` on CUDA)."""
    if device.type == "cuda":
        return ["fp32", "amp"]
    return ["fp32", "bf16"] if cpu_supports_bf16() else ["fp32"]


def measure_network(
    base: dict[str, Any], device: torch.device, precision: str, warmup: int, steps: int, repeats: int
) -> dict[str, Any]:
    """Training steps/s and slices/s of the bundle's network, loss and Adam on random batches of its batch shape."""
    parser = bundle_parser({**base, "device": f"$torch.device('{device}')", "cpu_bf16": precision == "bf16"})
    torch.manual_seed(SEED)
    network = parser.get_parsed_content("network")
    loss_function = parser.get_parsed_content("loss_function")
    optimizer = parser.get_parsed_content("optimizer")
    batch = int(parser.get_parsed_content("cases_per_batch")) * int(parser.get_parsed_content("slices_per_case"))
    roi = [int(s) for s in parser.get_parsed_content("roi_size")]
    channels = int(parser.get_parsed_content("network_def#in_channels"))
    outputs = int(parser.get_parsed_content("network_def#out_channels"))
    inputs = [torch.randn(batch, channels, *roi, device=device) for _ in range(2)]
    targets = [(torch.rand(batch, outputs, *roi, device=device) > 0.5).float() for _ in range(2)]
    amp = precision == "amp"
    scaler = torch.amp.GradScaler("cuda") if amp else None
    network.train()
    count = [0]

    def step() -> None:
        i = count[0] % len(inputs)
        count[0] += 1
        optimizer.zero_grad(set_to_none=True)
        if amp:
            with torch.autocast("cuda"):
                loss = loss_function(network(inputs[i]), targets[i])
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss = loss_function(network(inputs[i]), targets[i])
            loss.backward()
            optimizer.step()

    def steps_fn() -> None:
        for _ in range(steps):
            step()

    for _ in range(warmup):
        step()
    synchronize(device)
    timing = time_repeats(steps_fn, 0, repeats, device)
    return {
        "precision": precision,
        "batch_shape": [batch, channels, *roi],
        "warmup_steps": warmup,
        "steps_per_repeat": steps,
        "repeat_s": _spread(timing["times_s"]),
        "steps_per_s": _spread([steps / t for t in timing["times_s"]]),
        "slices_per_s": _spread([steps * batch / t for t in timing["times_s"]]),
    }


def bounds(data: dict[str, Any], network: dict[str, Any]) -> list[dict[str, Any]]:
    """Per pipeline and precision: the data/network throughput ratio, which bounds the epoch, epoch estimates."""
    rows = []
    for pipeline in PIPELINES:
        data_rate = data[pipeline]["slices_per_s"]["median"]
        slices = data[pipeline]["slices_per_epoch"]
        for precision, net in network.items():
            net_rate = net["slices_per_s"]["median"]
            ratio = data_rate / net_rate
            rows.append(
                {
                    "pipeline": pipeline,
                    "precision": precision,
                    "data_slices_per_s": data_rate,
                    "network_slices_per_s": net_rate,
                    "ratio_data_to_network": ratio,
                    "bound": "data" if ratio < 1 else "network",
                    "gpu_headroom_met": ratio >= GPU_HEADROOM,
                    # loader workers overlap the network (epoch = the slower side) when they have their own
                    # cores; with num_workers 0, or workers sharing the network's cores, the two add up
                    "epoch_s_overlapped": max(slices / data_rate, slices / net_rate),
                    "epoch_s_serial": slices / data_rate + slices / net_rate,
                }
            )
    return rows


def tables(result: dict[str, Any]) -> str:
    """The Markdown of a result: throughput with spread, then the bounds."""
    rows = []
    for name in PIPELINES:
        d = result["data"][name]
        s = d["slices_per_s"]
        rows.append(
            [
                f"data: {PIPELINE_LABELS[name]}",
                f"{s['median']:.2f}",
                f"{s['min']:.2f} - {s['max']:.2f}",
                f"{d['cases_per_s']['median']:.3f} cases/s",
                f"{d['epoch_s']['median']:.1f}",
            ]
        )
    for precision, net in result["network"].items():
        s = net["slices_per_s"]
        rows.append(
            [
                f"network: {precision} train step, batch {net['batch_shape'][0]}",
                f"{s['median']:.2f}",
                f"{s['min']:.2f} - {s['max']:.2f}",
                f"{net['steps_per_s']['median']:.3f} steps/s",
                "",
            ]
        )
    n = result["settings"]["cases"]
    out = markdown_table(["measurement", "slices/s (median)", "min - max", "per unit", f"epoch s ({n} cases)"], rows)
    bound_rows = [
        [
            PIPELINE_LABELS[b["pipeline"]],
            b["precision"],
            f"{b['ratio_data_to_network']:.2f}",
            b["bound"],
            "yes" if b["gpu_headroom_met"] else "no",
            f"{b['epoch_s_overlapped']:.1f} / {b['epoch_s_serial']:.1f}",
        ]
        for b in result["bounds"]
    ]
    out += "\n" + markdown_table(
        ["data pipeline", "network", "data / network", "bound", f">= {GPU_HEADROOM}x", "epoch s overlapped / serial"],
        bound_rows,
    )
    return out


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Generate or reuse the cases, measure, and return the result (JSON-ready)."""
    start = time.perf_counter()
    load_before = _load()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda: no CUDA device is available")
    workdir = Path(args.workdir).resolve()
    if workdir == REPO_ROOT or REPO_ROOT in workdir.parents:
        raise SystemExit(f"error: --workdir {workdir}: inside the repository; choose a folder outside it")
    shape = TINY_SHAPE if args.tiny else FULL_SHAPE
    phantoms = ensure_phantoms(workdir / f"phantoms_{'x'.join(map(str, shape))}_seed{SEED}", args.cases, shape)
    datalist = write_datalist(workdir / f"datalist_{args.cases}.json", args.cases)
    base: dict[str, Any] = {
        "bundle_root": str(workdir / "bundle"),
        "dataset_dir": phantoms["folder"],
        "data_list_file_path": str(datalist),
    }
    if args.tiny:
        base.update(json.loads(TINY_CONFIG.read_text()))
        base.update({"roi_size": [32, 32], "slices_per_case": 2, "num_workers": 0})
    if args.num_workers is not None:
        base["num_workers"] = args.num_workers
    probe = bundle_parser(base)
    settings = {
        "cases": args.cases,
        "case_shape": list(shape),
        "modalities": 4,
        "tiny": args.tiny,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "network_warmup_steps": args.warmup,
        "network_steps_per_repeat": args.steps,
        "bundle_config": str(TRAIN_CONFIG.relative_to(REPO_ROOT)),
        "overrides": {k: v for k, v in base.items() if k not in ("bundle_root", "dataset_dir", "data_list_file_path")},
        **{
            key: probe.get_parsed_content(key)
            for key in ("roi_size", "slices_per_case", "cases_per_batch", "num_workers", "tumour_slice_ratio")
        },
        "workdir": str(workdir),
    }

    def log(msg: str) -> None:
        print(f"[+{time.perf_counter() - start:.0f} s] {msg}", file=sys.stderr, flush=True)

    log(f"{args.cases} cases of {'x'.join(map(str, shape))} in {phantoms['folder']}; device {device}")
    data = measure_data(base, args.cases, args.repeats, workdir / "cache", log)
    network = {}
    for precision in _precisions(device):
        network[precision] = measure_network(base, device, precision, args.warmup, args.steps, args.repeats)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        log(f"network {precision}: {network[precision]['slices_per_s']['median']:.2f} slices/s")
    result = {
        "benchmark": "training_throughput",
        "command": "python -m benchmarks.training_throughput "
        + " ".join(sys.argv[1:] if args.argv is None else args.argv),
        "settings": settings,
        "machine": machine_description(device),
        "note": args.note,
        "load_average_1_5_15_min": {"before": load_before, "after": _load()},
        "phantoms": phantoms,
        "data": data,
        "network": network,
        "gpu_headroom": GPU_HEADROOM,
    }
    result["bounds"] = bounds(data, network)
    result["wall_time_s"] = time.perf_counter() - start
    result["markdown"] = tables(result)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.training_throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--cases", type=int, default=None, help="synthetic full-size cases (default 32; --tiny 3)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "training_throughput.json")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the network; the data pipeline is CPU)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="phantoms, datalist and cache")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of every measurement (at least 3)")
    parser.add_argument("--num-workers", type=int, default=None, help="loader workers (default: the bundle's)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed network steps (default 2; --tiny 1)")
    parser.add_argument("--steps", type=int, default=None, help="network steps per repeat (default 3; --tiny 1)")
    parser.add_argument("--note", default="", help="free text recorded in the JSON (e.g. what else was running)")
    parser.add_argument("--tiny", action="store_true", help="3 cases of 32x32x16 and a narrow network (tests)")
    args = parser.parse_args(argv)
    args.argv = argv
    if args.cases is None:
        args.cases = 3 if args.tiny else 32
    if args.warmup is None:
        args.warmup = 1 if args.tiny else 2
    if args.steps is None:
        args.steps = 1 if args.tiny else 3
    if args.cases < 1:
        parser.error(f"--cases: at least 1, got {args.cases}")
    if args.repeats < 3:
        parser.error(f"--repeats: at least 3 (median, min and max of a spread), got {args.repeats}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(result["markdown"])
    write_json(args.out, result, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
