"""Run a study plan on a BraTS-style folder: every unit once, resumable, then statistics and the report.

Usage::

    python -m benchmarks.study --data ../shared/data/upenn_gbm --plan benchmarks/study/plans/cpu.json \\
        --extra-training ../shared/data/tcga_lgg_brainles --results benchmarks/results/study_upenn_cpu

Per seed and patient-level fold (``data_prep.split.kfold_by_patient`` over the scored patients; cases of
``--extra-training`` join every fold's training list and are never scored) it runs, through
``python -m monai.bundle`` exactly as a user would:

- ``teacher_baseline`` and ``teacher_shared``: ``run training`` of the baseline and shared-depthwise bundles,
  ``teacher_epochs``;
- ``control_teacher_long``: the baseline for ``teacher_epochs + finetune_epochs`` (same budget as teacher +
  fine-tuning);
- each ``compressed`` entry: ``run compress`` of ``bundles/raagr2_pruned`` from ``teacher_baseline``, and
  ``shared_pruned`` from ``teacher_shared``, ``finetune_epochs`` in total;
- ``control_narrow`` / ``control_narrow_kd``: a RAAGR2-Net whose widths are scaled to the parameter count of
  ``narrow_reference``, trained from scratch for ``teacher_epochs + finetune_epochs``, without and with
  distillation from ``teacher_baseline``;

then, in this process: ONNX FP32/INT8/FP16 exports of the ``quantize`` models (INT8 calibrated on the fold's
training patients), per-patient scores of every model on the fold's test patients (the delivered label map;
INT8/FP16 with their FP32 reference in the bundles' shipped inference mode), the post-processing options on the
reference teacher, layer CKA against each compressed model's teacher, and per-volume latency.

Every unit writes ``<workdir>/units/s<seed>/f<fold>/<unit>/result.json`` when done and is skipped when that file
exists; a bundle run killed midway resumes from its own checkpoint (``checkpoint_last.pt``, the compression
progress record). ``results.json`` and the report are rebuilt from the unit results at the end.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from custom_modules.constants import REGION_DISPLAY_ORDER
from custom_modules.files import write_json
from custom_modules.handlers.region_metrics_writer import SCORED
from custom_modules.inference import OnnxRuntimeNetwork
from custom_modules.metrics import HD95_DEFINITIONS
from custom_modules.networks import RAAGR2Net, count_flops, count_parameters, cpu_autocast, cpu_supports_bf16
from custom_modules.transforms import LabelMapPostprocessing, delivered_regions
from data_prep.prepare import prepare_datalist
from data_prep.split import kfold_by_patient
from raagr2_tools.analysis import cka_matrix, compare_to_reference
from raagr2_tools.authoring import bundle_network
from raagr2_tools.compression import pruned_bundle_name
from raagr2_tools.jobs.bundle_cli import run_bundle
from raagr2_tools.shipping.cases import load_cases, pad_to_multiple, sample_slices
from raagr2_tools.shipping.fp16 import convert_fp16
from raagr2_tools.shipping.onnx import export_onnx
from raagr2_tools.shipping.quantize import quantize_int8

from ..machine import REPO_ROOT, machine_description
from .evaluation import NO_POSTPROCESSING, evaluate_cases, score_regions, segment, volume_latency
from .plan import CompressionSpec, StudyPlan

__all__ = ["Study", "ATTRIBUTION"]

BUNDLES = {
    "baseline": REPO_ROOT / "bundles" / "raagr2_baseline",
    "shared_depthwise": REPO_ROOT / "bundles" / "raagr2_shared_depthwise",
}
PRUNED = REPO_ROOT / "bundles" / "raagr2_pruned"
CONFIGS = Path(__file__).resolve().parent / "configs"
REFERENCE = "teacher_baseline"
STATISTICS = "paired over (seed, case): percentile bootstrap 95% CI of the mean delta, two-sided Wilcoxon signed-rank"
#: how a model is labelled in the report
LABELS = {
    "teacher_baseline": "teacher (baseline)",
    "teacher_shared": "teacher (shared-depthwise)",
    "control_teacher_long": "control: baseline, same total epochs",
    "control_narrow": "control: narrow RAAGR2-Net from scratch",
    "control_narrow_kd": "control: narrow RAAGR2-Net from scratch + KD",
}
#: credit the UPENN-GBM licence (CC BY 4.0) asks for wherever results from the data are shown
ATTRIBUTION = (
    "Scored cases: UPENN-GBM (CC BY 4.0, https://creativecommons.org/licenses/by/4.0/), expert-revised "
    "segmentations. Bakas S, Sako C, Akbari H, et al. Multi-parametric magnetic resonance imaging (mpMRI) scans "
    "for de novo Glioblastoma (GBM) patients from the University of Pennsylvania Health System (UPENN-GBM), "
    "Version 2. The Cancer Imaging Archive (2021). https://doi.org/10.7937/TCIA.709X-DN49. Bakas S, et al. The "
    "University of Pennsylvania glioblastoma (UPenn-GBM) cohort: advanced MRI, clinical, genomics, & radiomics. "
    "Scientific Data 9, 453 (2022). https://doi.org/10.1038/s41597-022-01560-7. Clark K, et al. The Cancer "
    "Imaging Archive (TCIA): maintaining and operating a public information repository. Journal of Digital "
    "Imaging 26(6):1045-1057 (2013)."
)


def narrow_features(target_parameters: int, base: Sequence[int] = (32, 64, 128, 256, 512)) -> list[int]:
    """RAAGR2-Net widths ``base`` scaled by one factor to about ``target_parameters``.

    The first width ``f1`` runs over the multiples of 4 (the input channels) up to ``base[0]`` and the others
    keep ``base``'s ratios to it (the grouped convs need each width to divide the next), so the widths are
    ``f1 * base[i] / base[0]``.
    """
    ratios = [b / base[0] for b in base]

    def params(f1: int) -> int:
        widths = [int(round(f1 * r)) for r in ratios]
        return count_parameters(RAAGR2Net(features=widths, out_channels=3, sigmoid=False))

    best = min(range(4, int(base[0]) + 1, 4), key=lambda f1: abs(params(f1) - target_parameters))
    return [int(round(best * r)) for r in ratios]


def cka_layers(net: torch.nn.Module, max_layers: int) -> list[str]:
    """Layers to compare with CKA: the network's blocks with weights (top-level children: encoder blocks,
    up-convolutions, attention gates, decoder blocks, head) that run exactly once per forward pass, in forward
    order, thinned evenly to ``max_layers`` (first and last kept). Single convs inside the recurrent blocks run
    several times per pass, so blocks are the unit of comparison."""
    order: list[str] = []
    handles = [
        module.register_forward_hook(lambda m, a, o, n=name: order.append(n))
        for name, module in net.named_children()
        if any(True for _ in module.parameters())
    ]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, 4, 64, 64))
    finally:
        for handle in handles:
            handle.remove()
    names = [n for n in dict.fromkeys(order) if order.count(n) == 1]
    if len(names) <= max_layers:
        return names
    picks = np.unique(np.linspace(0, len(names) - 1, max_layers).round().astype(int))
    return [names[i] for i in picks]


def _spread(values: Sequence[float]) -> dict[str, float | int | None]:
    array = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if not array.size:
        return {"mean": None, "std": None, "min": None, "max": None, "median": None, "n": 0}
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if array.size > 1 else 0.0,
        "min": float(array.min()),
        "max": float(array.max()),
        "median": float(np.median(array)),
        "n": int(array.size),
    }


def _metric_keys() -> list[str]:
    return [f"{r}_{kind}" for kind in ("dice", "hd95") for r in REGION_DISPLAY_ORDER]


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean, sd (ddof 1), min, max, median and n over cases of every metric."""
    return {key: _spread([r[key] for r in rows]) for key in _metric_keys()}


def compare(rows: Sequence[dict[str, Any]], reference: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Paired deltas against the reference per metric: bootstrap 95% CI and Wilcoxon (keyed by fold/seed/case)."""

    def keyed(rs: Sequence[dict[str, Any]], metric: str) -> dict[str, float]:
        return {f"s{r['seed']}/{r['case']}": r[metric] for r in rs}

    return {m: compare_to_reference(keyed(rows, m), keyed(reference, m)) for m in _metric_keys()}


class Study:
    """One study run (see the module docstring).

    Args:
        plan: the parsed plan.
        data: BraTS-style folder of the scored cases.
        workdir: where units, models and the results go.
        extra_training: folders of cases added to every fold's training list, never scored.
        log: progress printer.
    """

    def __init__(
        self,
        plan: StudyPlan,
        data: Path,
        workdir: Path,
        extra_training: Sequence[Path] = (),
        log: Callable[[str], None] = lambda s: print(s, flush=True),
    ) -> None:
        self.plan, self.data, self.workdir = plan, Path(data).resolve(), Path(workdir).resolve()
        self.extra_training = [Path(p).resolve() for p in extra_training]
        self.log = log
        self.started = time.perf_counter()
        self.done_units = 0
        self.unit_seconds = 0.0
        self.machine: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------------------
    # units

    def unit(self, key: str, work: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """The result of unit ``key``: read when done, else run ``work(unit_dir)`` and record it atomically."""
        folder = self.workdir / "units" / key
        done = folder / "result.json"
        if done.is_file():
            result = json.loads(done.read_text())
            self.unit_seconds += float(result.get("seconds", 0.0))
            return result
        elapsed = time.perf_counter() - self.started
        self.log(f"[study {elapsed / 60:5.1f} min] {key}")
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        result = work(folder)
        result["seconds"] = round(time.perf_counter() - start, 1)
        self.unit_seconds += result["seconds"]
        write_json(done, result, indent=2)
        self.done_units += 1
        return result

    # ------------------------------------------------------------------------------------------------------
    # data

    def _entries(self, src: Path, name: str) -> list[dict[str, Any]]:
        datalist = prepare_datalist(src, self.workdir / "data" / f"{name}.json", 0.0, 0.0, seed=0)
        entries = datalist["training"] + datalist["test"]
        for entry in entries:  # absolute paths: the fold datalists mix folders
            entry["image"] = [str(src / p) for p in entry["image"]]
            entry["label"] = str(src / entry["label"])
        return entries

    def folds(self) -> list[dict[str, Any]]:
        """The fold datalists (written once): scored cases split by patient, extra cases in every training list."""
        record = self.workdir / "data" / "folds.json"
        if record.is_file():
            return json.loads(record.read_text())
        scored = self._entries(self.data, "scored")
        extra = [e for i, src in enumerate(self.extra_training) for e in self._entries(src, f"extra{i}")]
        by_case = {e["case_id"]: e for e in scored}
        folds = []
        for f, split in enumerate(kfold_by_patient({c: e["patient_id"] for c, e in by_case.items()}, self.plan.folds)):
            datalist = {
                "description": f"study fold {f}: test patients never in training; extra cases train only",
                "training": [by_case[c] for c in split["training"]] + extra,
                "validation": [],
                "test": [by_case[c] for c in split["test"]],
                "report": [],  # run compress skips its own evaluation: the study scores every model itself
            }
            path = write_json(self.workdir / "data" / f"fold{f}.json", datalist, indent=2)
            folds.append(
                {
                    "fold": f,
                    "datalist": str(path),
                    "training": [e["case_id"] for e in datalist["training"]],
                    "test": split["test"],
                    "test_patients": sorted({by_case[c]["patient_id"] for c in split["test"]}),
                }
            )
        write_json(record, folds, indent=2)
        return folds

    # ------------------------------------------------------------------------------------------------------
    # machine

    def use_bf16(self) -> bool:
        """``bundle_settings.cpu_bf16``: true/false, or ``"auto"``: on where the CPU has native bf16 and a timed
        training step of the baseline is faster with it (recorded in the results)."""
        setting = self.plan.bundle_settings.get("cpu_bf16", False)
        if setting != "auto":
            return bool(setting)
        if "bf16" not in self.machine:  # once per process: the unit is read (and its time counted) once
            self.machine["bf16"] = self.unit("machine_bf16_check", lambda _: self._bf16_check())
        return bool(self.machine["bf16"]["used"])

    def _bf16_check(self) -> dict[str, Any]:
        if not cpu_supports_bf16():
            return {"supported": False, "used": False}
        size = int(self.plan.bundle_settings.get("roi_size", [128, 128])[0])
        batch = int(self.plan.bundle_settings.get("slices_per_case", 8))
        times = {}
        for mode in ("fp32", "bf16"):
            torch.manual_seed(0)
            net = cpu_autocast(RAAGR2Net(out_channels=3, sigmoid=False), enabled=mode == "bf16").train()
            optimizer = torch.optim.Adam(net.parameters(), 1e-4)
            x, y = torch.randn(batch, 4, size, size), (torch.rand(batch, 3, size, size) > 0.5).float()
            seconds = []
            for _ in range(4):
                start = time.perf_counter()
                loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                seconds.append(time.perf_counter() - start)
            times[mode] = sorted(seconds[1:])[1]  # median of 3 after a warm-up
        speedup = times["fp32"] / times["bf16"]
        return {
            "supported": True,
            "train_step_fp32_s": times["fp32"],
            "train_step_bf16_s": times["bf16"],
            "speedup": speedup,
            "used": speedup > 1.1,
            "step": f"{batch} slices of {size}x{size}, Adam, median of 3 after one warm-up",
        }

    # ------------------------------------------------------------------------------------------------------
    # bundle runs

    def overlay(self) -> Path:
        """The settings overlay of every bundle run: ``configs/training.json`` with the plan's bundle keys."""
        base = json.loads((CONFIGS / "training.json").read_text())
        settings = {**self.plan.bundle_settings, "cpu_bf16": self.use_bf16()}
        path = self.workdir / "overlay.json"
        content = {**base, **settings}
        if not path.is_file() or json.loads(path.read_text()) != content:
            write_json(path, content, indent=2)
        return path

    def _common(self, fold: dict[str, Any], seed: int) -> dict[str, Any]:
        return {"dataset_dir": "/", "data_list_file_path": fold["datalist"], "seed": seed}

    def train(
        self, folder: Path, fold: dict[str, Any], seed: int, variant: str, epochs: int, extra: dict[str, Any]
    ) -> dict[str, Any]:
        """``run training`` of the ``variant`` bundle; ``extra`` bundle keys go into a per-run overlay file."""
        configs = [BUNDLES[variant] / "configs" / "train.json", self.overlay()]
        if extra:
            configs.append(write_json(folder / "run_overlay.json", extra, indent=2))
        run_bundle(configs, "training", {**self._common(fold, seed), "bundle_root": folder, "epochs": epochs})
        keys = {**self.plan.bundle_settings, **extra}
        network = {k: v for k, v in keys.items() if k.startswith("network_def#") and k != "network_def#sharing"}
        return {"variant": variant, "ckpt": str(folder / "models" / "model.pt"), "network": network, "epochs": epochs}

    def compress(
        self, folder: Path, fold: dict[str, Any], seed: int, spec: CompressionSpec, teacher: dict[str, Any]
    ) -> dict[str, Any]:
        """``run compress`` of the pruned bundle: prune ``teacher`` as ``spec`` says, ``finetune_epochs`` in total."""
        configs = [PRUNED / "configs" / "train.json", self.overlay(), PRUNED / "configs" / "compress.json"]
        overrides = {
            **self._common(fold, seed),
            "bundle_root": PRUNED,
            "output_dir": folder,
            "teacher_ckpt": teacher["ckpt"],
            "variant": spec.variant,
            "method": spec.method,
            "ratio": spec.ratio,
            "schedule": spec.schedule,
            "iterative_steps": spec.steps,
            "epochs": self.plan.finetune_epochs // spec.steps,
            "distillation": spec.distillation,
            **self._allocation_overrides(spec),
            "onnx_check": False,
            "measure_latency": False,
            "eval_split": "report",  # empty: the study scores the compressed models with every other model
            "overwrite": True,  # the unit's own folder: a unit killed after writing its bundle is done again
        }
        run_bundle(configs, "compress", overrides)
        bundle = folder / pruned_bundle_name(spec.method, spec.ratio, spec.variant)
        return {
            "variant": spec.variant,
            "bundle_dir": str(bundle),
            "ckpt": str(bundle / "models" / "model.pt"),
            "epochs": self.plan.finetune_epochs,
        }

    def _allocation_overrides(self, spec: CompressionSpec) -> dict[str, Any]:
        """The bundle keys of ``spec``'s allocation: none for the criterion's default; for ``rl`` the plan's search
        budget and one latency table per study (the same architecture, input size, backend and CPU in every fold)."""
        if spec.allocation is None:
            return {}
        keys: dict[str, Any] = {"allocation": spec.allocation}
        if spec.equal_macs:
            keys["equal_macs"] = True
        if spec.allocation == "rl":
            search = self.plan.search
            keys.update({f"rl_{k}": search[k] for k in ("samples", "batches") if k in search})
            keys["rl_cost"] = spec.rl_cost
            keys["rl_target"] = spec.rl_target
            keys["latency_table"] = str(self.workdir / "latency_table_onnxruntime.json")
        return keys

    # ------------------------------------------------------------------------------------------------------
    # models in this process

    @staticmethod
    def load(model: dict[str, Any]) -> torch.nn.Module:
        """The network of a unit result with its weights (``weights_only``), eval mode, on the CPU."""
        if "bundle_dir" in model:
            net = bundle_network(model["bundle_dir"])
        else:
            net = bundle_network(BUNDLES[model["variant"]], model.get("network") or None)
        net.load_state_dict(torch.load(model["ckpt"], map_location="cpu", weights_only=True))
        return net.eval()

    def cases(self, fold: dict[str, Any], split: str = "test") -> list[dict[str, Any]]:
        return list(load_cases(BUNDLES["baseline"], "/", fold["datalist"], split))

    def cost(self, net: torch.nn.Module) -> dict[str, Any]:
        return {
            "parameters": count_parameters(net),
            "macs_per_slice": count_flops(net, (1, 4, 240, 240)) // 2,
            "macs_input": "one 4x240x240 slice (FLOP counter / 2)",
        }

    def evaluate(
        self, net: torch.nn.Module, cases: list[dict[str, Any]], fold: int, seed: int, options: dict | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        inference = self.plan.inference
        fast = cpu_autocast(net, enabled=bool(inference.get("cpu_bf16", False)) and self.use_bf16())
        rows = evaluate_cases(
            fast,
            cases,
            options,
            hd95=self.hd95,
            crop_to_brain=bool(inference.get("crop_to_brain", True)),
            skip_empty_slices=bool(inference.get("skip_empty_slices", True)),
        )
        return {name: [{**r, "fold": fold, "seed": seed} for r in rs] for name, rs in rows.items()}

    @property
    def hd95(self) -> str:
        return str(self.plan.bundle_settings.get("hd95_definition", "brats2023"))

    # ------------------------------------------------------------------------------------------------------
    # one fold

    def run_fold(self, fold: dict[str, Any], seed: int) -> dict[str, dict[str, Any]]:
        """Every unit of one fold and seed; returns ``{model_id: unit result with "rows"}``."""
        plan, tag = self.plan, f"s{seed}/f{fold['fold']}"
        budget = plan.teacher_epochs + plan.finetune_epochs
        models: dict[str, dict[str, Any]] = {}
        models["teacher_baseline"] = self.unit(
            f"{tag}/teacher_baseline",
            lambda d: self.train(d, fold, seed, "baseline", plan.teacher_epochs, {}),
        )
        models["teacher_shared"] = self.unit(
            f"{tag}/teacher_shared",
            lambda d: self.train(d, fold, seed, "shared_depthwise", plan.teacher_epochs, {}),
        )
        models["control_teacher_long"] = self.unit(
            f"{tag}/control_teacher_long", lambda d: self.train(d, fold, seed, "baseline", budget, {})
        )
        for spec in plan.compressed:
            models[spec.model_id] = self.unit(
                f"{tag}/{spec.model_id}",
                lambda d, spec=spec: self.compress(d, fold, seed, spec, models["teacher_baseline"]),
            )
        shared = plan.shared_pruned
        models[shared.model_id] = self.unit(
            f"{tag}/{shared.model_id}", lambda d: self.compress(d, fold, seed, shared, models["teacher_shared"])
        )
        target = count_parameters(self.load(models[plan.narrow_reference]))
        base = self.plan.bundle_settings.get("network_def#features", (32, 64, 128, 256, 512))
        narrow = {"network_def#features": narrow_features(target, base)}
        models["control_narrow"] = self.unit(
            f"{tag}/control_narrow", lambda d: self.train(d, fold, seed, "baseline", budget, narrow)
        )
        kd = {**json.loads((CONFIGS / "distil_from_teacher.json").read_text()), **narrow}
        kd["teacher_ckpt"] = models["teacher_baseline"]["ckpt"]
        kd["teacher_network_def"] = {**kd["teacher_network_def"], "features": list(base)}
        models["control_narrow_kd"] = self.unit(
            f"{tag}/control_narrow_kd", lambda d: self.train(d, fold, seed, "baseline", budget, kd)
        )
        cases = self.cases(fold)
        for model_id, model in models.items():
            scored = self.unit(
                f"{tag}/score/{model_id}", lambda _, m=model, i=model_id: self._score(m, i, cases, fold, seed)
            )
            model.update(scored)
        for model_id in plan.quantize:
            quantized = self.unit(
                f"{tag}/quantize/{model_id}", lambda d, i=model_id: self._quantize(d, models[i], fold, seed, cases)
            )
            for fmt, rows in quantized["rows"].items():
                models[f"{model_id}_{fmt}"] = {
                    "kind": "quantized" if fmt != "onnx_fp32" else "shipped_reference",
                    "base": model_id,
                    "format": fmt,
                    "rows": rows,
                    "agreement": quantized["agreement"].get(fmt),
                    **quantized["cost"],
                }
        if fold["fold"] in plan.cka.get("folds", [0]) and seed == plan.seeds[0]:
            for spec in (*plan.compressed, plan.shared_pruned):
                teacher = "teacher_baseline" if spec.variant == "baseline" else "teacher_shared"
                models[spec.model_id]["cka"] = self.unit(
                    f"{tag}/cka/{spec.model_id}",
                    lambda _, t=teacher, s=spec: self._cka(models[t], models[s.model_id], t, cases),
                )
        specs_ids = {spec.model_id for spec in (*plan.compressed, plan.shared_pruned)}
        if fold["fold"] in plan.latency.get("folds", [0]) and seed == plan.seeds[0]:
            timed = plan.latency.get("models")
            for model_id, model in list(models.items()):
                if "ckpt" in model and (timed is None or model_id in timed or model_id in specs_ids):
                    model["latency"] = self.unit(
                        f"{tag}/latency/{model_id}", lambda _, m=model: self._latency(m, cases[0])
                    )
        return models

    def _score(
        self, model: dict[str, Any], model_id: str, cases: list[dict[str, Any]], fold: dict[str, Any], seed: int
    ) -> dict[str, Any]:
        net = self.load(model)
        options = None
        if model_id == REFERENCE:
            options = {name: LabelMapPostprocessing(**o) for name, o in self.plan.postprocessing.items()}
        rows = self.evaluate(net, cases, fold["fold"], seed, options)
        result = {"rows": rows.pop(NO_POSTPROCESSING), **self.cost(net)}
        if rows:
            result["postprocessing"] = rows
        return result

    def _quantize(
        self, folder: Path, model: dict[str, Any], fold: dict[str, Any], seed: int, cases: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """ONNX FP32 / INT8 (calibrated on the fold's training patients) / FP16 of ``model``, each scored in the
        bundles' shipped inference mode (whole slices, no skipping, FP32 I/O) with its agreement to ONNX FP32."""
        net = self.load(model)
        fp32 = export_onnx(net, folder / "model.onnx", (1, 4, 64, 64))
        training = [c for c in load_cases(BUNDLES["baseline"], "/", fold["datalist"], "training")]
        scored_patients = {c["patient_id"] for c in cases}
        calibration = [c for c in training if c["patient_id"] not in scored_patients]
        slices, _ = sample_slices(calibration, int(self.plan.inference.get("calibration_slices", 32)))
        formats = self.plan.quantize_formats
        files = {"onnx_fp32": fp32}
        if "onnx_int8" in formats:
            files["onnx_int8"] = folder / "model_int8.onnx"
            quantize_int8(fp32, files["onnx_int8"], [pad_to_multiple(s[None])[0] for s in slices])
        if "onnx_fp16" in formats:
            files["onnx_fp16"] = folder / "model_fp16.onnx"
            convert_fp16(fp32, files["onnx_fp16"])
        rows: dict[str, list[dict[str, Any]]] = {}
        masks: dict[str, list[torch.Tensor]] = {}
        for fmt, path in files.items():
            session = OnnxRuntimeNetwork(path, providers=["CPUExecutionProvider"])
            rows[fmt], masks[fmt] = [], []
            for case in cases:
                regions = delivered_regions(
                    segment(session, case["image"], crop_to_brain=False, skip_empty_slices=False)
                )
                masks[fmt].append(regions)
                row = {"case": case["case_id"], "patient": case["patient_id"], "fold": fold["fold"], "seed": seed}
                rows[fmt].append({**row, **score_regions(regions, case["label"], case["spacing"], self.hd95)})
        agreement = {}
        for fmt in (f for f in files if f != "onnx_fp32"):
            agreement[fmt] = [
                {
                    "case": case["case_id"],
                    **score_regions(m, ref, case["spacing"], self.hd95),
                }
                for case, m, ref in zip(cases, masks[fmt], masks["onnx_fp32"])
            ]
        return {
            "rows": rows,
            "agreement": agreement,
            "calibration_patients": sorted({c["patient_id"] for c in calibration}),
            "calibration_slices": len(slices),
            "cost": self.cost(net),
        }

    def _cka(self, teacher: dict[str, Any], student: dict[str, Any], teacher_id: str, cases: list) -> dict[str, Any]:
        settings = self.plan.cka
        slices, _ = sample_slices(cases, int(settings.get("slices", 32)))
        batch = int(settings.get("batch", 8))
        array = pad_to_multiple(np.stack(slices))
        batches = [torch.from_numpy(array[i : i + batch]) for i in range(0, len(array) - batch + 1, batch)]
        teacher_net, student_net = self.load(teacher), self.load(student)
        layers = cka_layers(teacher_net, int(settings.get("max_layers", 16)))
        student_layers = [n for n in layers if n in dict(student_net.named_modules())]
        matrix = cka_matrix(teacher_net, student_net, layers, student_layers, batches)
        diagonal = [float(matrix[layers.index(n), j]) for j, n in enumerate(student_layers)]
        return {
            "reference": teacher_id,
            "row_layers": layers,
            "col_layers": student_layers,
            "matrix": matrix.tolist(),
            "diagonal": diagonal,
            "slices": len(batches) * batch,
        }

    def _latency(self, model: dict[str, Any], case: dict[str, Any]) -> dict[str, Any]:
        """Per-volume seconds on the fastest PyTorch path of this machine (bf16 autocast where it was faster)."""
        net = cpu_autocast(self.load(model), enabled=self.use_bf16())
        repeats = int(self.plan.latency.get("repeats", 3))
        inference = self.plan.inference
        timing = volume_latency(
            net,
            case["image"],
            repeats,
            crop_to_brain=bool(inference.get("crop_to_brain", True)),
            skip_empty_slices=bool(inference.get("skip_empty_slices", True)),
        )
        backend = "torch bf16 autocast" if self.use_bf16() else "torch fp32"
        return {**timing, "backend": f"{backend}, {torch.get_num_threads()} threads", "case": case["case_id"]}

    # ------------------------------------------------------------------------------------------------------
    # the whole study

    def check_workdir(self) -> None:
        """Record the plan and data in the workdir, or refuse a workdir that holds the results of another.

        Raises:
            ValueError: naming the workdir when its recorded plan or data differ from this run's.
        """
        record = self.workdir / "study.json"
        current = {"plan": {k: v for k, v in self.plan.as_dict().items() if k != "source"}, "data": str(self.data)}
        current["extra_training"] = [str(p) for p in self.extra_training]
        current = json.loads(json.dumps(current))
        if record.is_file():
            if json.loads(record.read_text()) != current:
                raise ValueError(
                    f"{record}: this workdir holds units of another plan or data set; their results would not "
                    "match this plan (use another --workdir)"
                )
            return
        write_json(record, current, indent=2)

    def run(self) -> dict[str, Any]:
        """Run every fold and seed, then aggregate; returns the results dict (also written as results.json)."""
        self.check_workdir()
        folds = self.folds()
        self.machine = {**machine_description(), **self.machine}
        self.use_bf16()
        per_fold = [(seed, fold, self.run_fold(fold, seed)) for seed in self.plan.seeds for fold in folds]
        return self.aggregate(folds, per_fold)

    def aggregate(self, folds: list[dict[str, Any]], per_fold: list[tuple[int, dict, dict]]) -> dict[str, Any]:
        models: dict[str, dict[str, Any]] = {}
        for _, _, fold_models in per_fold:
            for model_id, model in fold_models.items():
                entry = models.setdefault(model_id, {"per_case": [], "postprocessing_rows": {}})
                entry["per_case"] += model["rows"]
                for name, rows in model.get("postprocessing", {}).items():
                    entry["postprocessing_rows"].setdefault(name, []).extend(rows)
                for key in ("parameters", "macs_per_slice", "latency", "cka", "epochs", "variant", "kind", "format"):
                    if key in model and model[key] is not None:
                        entry[key] = model[key]
                if model.get("agreement"):
                    entry.setdefault("agreement_rows", []).extend(model["agreement"])
        specs = {s.model_id: s for s in (*self.plan.compressed, self.plan.shared_pruned)}
        reference = models[REFERENCE]["per_case"]
        out_models = {}
        for model_id, entry in models.items():
            spec = specs.get(model_id)
            kind = entry.get("kind") or (
                "teacher"
                if model_id.startswith("teacher")
                else "control"
                if model_id.startswith("control")
                else "compressed"
            )
            label = LABELS.get(model_id) or (spec.label if spec else model_id)
            if entry.get("format"):
                base_id = model_id.rsplit("_onnx_", 1)[0]
                label = f"{LABELS.get(base_id, base_id)}, ONNX {entry['format'].split('_')[-1].upper()} (shipped mode)"
            rows = [{k: v for k, v in r.items() if k != "channels"} for r in entry["per_case"]]
            base = entry.get("format") and model_id.rsplit("_onnx_", 1)[0]
            versus = models[f"{base}_onnx_fp32"]["per_case"] if base else reference
            out_models[model_id] = {
                "label": label,
                "kind": "quantized" if kind == "quantized" else "control" if kind == "shipped_reference" else kind,
                "variant": entry.get("variant") or (spec.variant if spec else "baseline"),
                "method": spec.method if spec else None,
                "ratio": spec.ratio if spec else None,
                "schedule": spec.schedule if spec else None,
                "epochs_total": self._epochs_total(model_id),
                "parameters": entry.get("parameters"),
                "macs_per_slice": entry.get("macs_per_slice"),
                "latency": entry.get("latency"),
                "per_case": rows,
                "summary": summarise(rows),
                "vs_reference": None if model_id == REFERENCE else self._versus(rows, versus),
                "reference": f"{base}_onnx_fp32" if base else REFERENCE,
            }
            if entry.get("agreement_rows"):
                out_models[model_id]["agreement_with_fp32"] = summarise(entry["agreement_rows"])
        postprocessing = {}
        for name, rows in models[REFERENCE]["postprocessing_rows"].items():
            postprocessing[name] = {
                "options": self.plan.postprocessing[name],
                "summary": summarise(rows),
                "vs_none": self._versus(rows, reference),
                "per_case": rows,
            }
        cka = {m: models[m]["cka"] for m in models if models[m].get("cka")}
        results = {
            "title": f"Compression study: {self.plan.name}",
            "preset": self.plan.preset,
            "plan": self.plan.as_dict(),
            "data": {
                "dataset_dir": str(self.data),
                "scored_patients": sorted({p for f in folds for p in f["test_patients"]}),
                "extra_training_cases": sorted(
                    {c for f in folds for c in f["training"]} - {c for f in folds for c in f["test"]}
                ),
                "attribution": ATTRIBUTION,
            },
            "folds": folds,
            "machine": self.machine,
            "protocol": {
                "folds": self.plan.folds,
                "seeds": list(self.plan.seeds),
                "epochs_teacher": self.plan.teacher_epochs,
                "epochs_finetune": self.plan.finetune_epochs,
                "scored": f"{SCORED}, per patient never trained on",
                "hd95_definition": {"name": self.hd95, "description": HD95_DEFINITIONS[self.hd95]},
                "inference": self._inference_text(),
                "statistics": STATISTICS,
            },
            "reference": REFERENCE,
            "models": out_models,
            "postprocessing": postprocessing,
            "cka": cka,
            "seconds_this_process": round(time.perf_counter() - self.started, 1),
            "units_seconds": round(self.unit_seconds, 1),
            "units_seconds_means": "sum of the wall seconds of every unit (all bundle runs, scoring, exports, CKA, "
            "latency), over however many resumed processes ran them",
        }
        return results

    def _versus(self, rows: list[dict[str, Any]], reference: list[dict[str, Any]]) -> dict[str, Any]:
        compared = compare(rows, reference)
        return {
            m: {"delta_mean": c["delta_mean"], "ci": c["ci"], "wilcoxon": c["wilcoxon"]} for m, c in compared.items()
        }

    def _epochs_total(self, model_id: str) -> int:
        """Teachers and their quantized forms: ``teacher_epochs``; controls and compressed models (teacher +
        fine-tuning): ``teacher_epochs + finetune_epochs``."""
        extra = 0 if model_id.startswith("teacher") else self.plan.finetune_epochs
        return self.plan.teacher_epochs + extra

    def _inference_text(self) -> str:
        inference = self.plan.inference
        parts = [
            "axial slices through BrainSliceInferer",
            "cropped to the brain" if inference.get("crop_to_brain", True) else "whole slices",
            "empty slices skipped" if inference.get("skip_empty_slices", True) else "every slice",
            "bf16 autocast" if inference.get("cpu_bf16") and self.use_bf16() else "fp32",
        ]
        return (
            ", ".join(parts) + "; ONNX INT8/FP16 and their FP32 reference: the shipped mode (whole slices, every slice)"
        )
