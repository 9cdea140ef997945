"""What a bundle's inference costs outside the network: each stage of its own pipeline timed on one real case.

    python -m benchmarks.pipeline_stages --data ../shared/data/upenn_gbm --case UPENN-GBM-00008_11 \
        --bundle DIR [--repeats 3] [--json benchmarks/results/pipeline_stages_cpu.json]

The stages are the bundle's ``configs/inference.json`` components, run one by one as the evaluator runs them:
every transform of ``preprocessing`` (prediction target, loading and checking the four NIfTI files, float32,
z-score), the ``inferer`` with a network that costs nothing (it returns zeros of the output's shape: what slicing,
skipping and pasting cost, without the network), and every transform of ``postprocessing`` (sigmoid, threshold,
label map, cast, naming, writing ``<case>_pred.nii.gz``). Their sum is the floor of the end-to-end time that no
backend can go below on this machine. Each stage: median, min and max of ``--repeats`` timed passes after one
warm-up. Writes the JSON (with the machine) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "pipeline_stages_cpu.json"


def _spread(times: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "times": times}


def _name(transform: Any) -> str:
    return type(transform).__name__


def measure(bundle: Path, data: Path, case: str, repeats: int) -> dict[str, Any]:
    """Stage name -> timing record (seconds) for one case through ``bundle``'s inference pipeline."""
    import torch
    from monai.bundle import ConfigParser
    from monai.data import MetaTensor

    from data_prep.prepare import prepare_datalist

    with tempfile.TemporaryDirectory(prefix="pipeline_stages_") as tmp:
        content = prepare_datalist(data, Path(tmp) / "all.json", all_test=True)
        entries = [e for e in content["test"] if e["case_id"] == case]
        if not entries:
            raise SystemExit(f"error: {data}: no case {case!r}")
        entry = {**entries[0], "image": [str(data / p) for p in entries[0]["image"]]}
        entry.pop("label", None)
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "inference.json"))
        parser.read_meta(str(bundle / "configs" / "metadata.json"))
        parser.update({"bundle_root": str(bundle), "output_dir": str(Path(tmp) / "out"), "overwrite": True})
        pre = parser.get_parsed_content("preprocessing").transforms
        inferer = parser.get_parsed_content("inferer")
        post = parser.get_parsed_content("postprocessing").transforms
        meta = json.loads((bundle / "configs" / "metadata.json").read_text())
        out_channels = int(meta["network_data_format"]["outputs"]["pred"]["num_channels"])

        def free_network(x: torch.Tensor) -> torch.Tensor:  # the network's output shape at no cost
            return torch.zeros((x.shape[0], out_channels, *x.shape[2:]), dtype=torch.float32)

        stages: dict[str, list[float]] = {}
        for run in range(repeats + 1):
            item: dict[str, Any] = dict(entry)
            for t in pre:
                start = time.perf_counter()
                item = t(item)
                if run:
                    stages.setdefault(f"pre: {_name(t)}", []).append(time.perf_counter() - start)
            image = item["image"]
            start = time.perf_counter()
            with torch.no_grad():
                logits = inferer(image[None], free_network)[0]
            if run:
                stages.setdefault("inferer without the network", []).append(time.perf_counter() - start)
            result = {**item, "pred": MetaTensor(torch.as_tensor(logits), meta=dict(image.meta))}
            for t in post:
                start = time.perf_counter()
                result = t(result)
                if run:
                    stages.setdefault(f"post: {_name(t)}", []).append(time.perf_counter() - start)
    records = {name: _spread(times) for name, times in stages.items()}
    totals = [sum(times[i] for times in stages.values()) for i in range(repeats)]
    return {
        "stages": records,
        "total_without_network": _spread(totals),
        "slices_run": inferer.last_stats.get("slices_run"),
    }


def render(result: dict[str, Any]) -> str:
    from raagr2_tools.reports.tables import markdown_table

    stages = [*result["stages"].items(), ("total (every stage but the network)", result["total_without_network"])]
    rows = [[name, f"{r['median']:.3f}", f"{r['min']:.3f} - {r['max']:.3f}"] for name, r in stages]
    machine = result["machine"]
    head = (
        f"Case {result['case']}, bundle {result['bundle']}; {result['repeats']} timed passes after one warm-up; "
        f"{machine['cpu_model']} ({machine['cpu_cores_usable']} usable cores).\n\n"
    )
    return head + markdown_table(["stage", "s (median)", "min - max"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline_stages", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--case", required=True)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)

    from custom_modules.files import write_json

    from .machine import machine_description

    result: dict[str, Any] = {
        "benchmark": "pipeline_stages",
        "command": "python -m benchmarks.pipeline_stages " + " ".join(sys.argv[1:] if argv is None else argv),
        "case": args.case,
        "bundle": str(args.bundle),
        "repeats": args.repeats,
        "machine": machine_description("cpu"),
    }
    result.update(measure(args.bundle.resolve(), args.data, args.case, args.repeats))
    result["markdown"] = render(result)
    write_json(args.json, result, indent=2)
    print(result["markdown"])
    print(json.dumps({"total_without_network_s": result["total_without_network"]["median"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
