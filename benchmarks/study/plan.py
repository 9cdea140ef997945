"""The study plan: one JSON file says what is trained, compressed, scored and measured (``plans/*.json``).

Keys (all required unless a default is given):

- ``name``, ``preset``: names for the report.
- ``folds``: patient-level k (the scored patients are split with :func:`data_prep.split.kfold_by_patient`);
  ``seeds``: training seeds, every model of a fold is trained once per seed.
- ``teacher_epochs``, ``finetune_epochs``: the budget. Every compressed model gets ``finetune_epochs`` in total
  (an iterative schedule of ``steps`` steps trains ``finetune_epochs / steps`` per step, so the total is equal
  across criteria and schedules); the same-budget controls train ``teacher_epochs + finetune_epochs``.
- ``bundle_settings``: bundle keys for every training run (``roi_size``, ``slices_per_case``, ``learning_rate``,
  ...); ``cpu_bf16`` may be ``"auto"`` (on where the CPU has native bfloat16 and the machine check finds it
  faster).
- ``compressed``: list of ``{"method", "ratio", "schedule", "steps" (1), "distillation" (true), "allocation"
  (the criterion's default), "rl_cost" ("macs")}`` of the baseline teacher; ``shared_pruned``: one such entry
  applied to the shared-depthwise teacher. ``allocation`` ``rl`` is the learned per-group allocation at the
  uniform allocation's cost (MACs, or with ``rl_cost`` ``latency`` the latency on ONNX Runtime predicted by the
  per-layer table), at the cost of the ``rl_target`` allocation (``uniform`` or ``global``) at the same ratio;
  ``equal_macs`` (``global`` only) scales the global ratio to the uniform allocation's MACs;
  ``search``: ``{"samples", "batches"}`` of every ``rl`` entry (the bundle defaults otherwise).
- ``narrow_reference``: id of the compressed model whose parameter count the narrow controls match.
- ``quantize``: model ids exported to ONNX (INT8 calibrated on the fold's training patients);
  ``quantize_formats``: of ``onnx_int8``, ``onnx_fp16`` (default both; FP16 is for GPU execution providers,
  a CPU preset may leave it to the GPU preset).
- ``inference``: ``{"crop_to_brain", "skip_empty_slices", "cpu_bf16"}`` used to score the PyTorch models;
  INT8/FP16 and their FP32 reference are scored in the bundles' shipped mode (no cropping, no skipping, FP32).
- ``postprocessing``: ``{name: {keep_largest_component, min_component_voxels, et_min_voxels}}`` measured on the
  reference teacher; ``cka``: ``{"slices", "batch", "max_layers", "folds"}``; ``latency``:
  ``{"repeats", "folds", "models"}`` (``models``: ids timed besides every compressed model; default all).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raagr2_tools.compression.criteria import METHODS
from raagr2_tools.compression.schedule import LAYER_GROUPS, SCHEDULES
from raagr2_tools.compression.settings import PruningSettings

__all__ = ["CompressionSpec", "StudyPlan", "load_plan"]


@dataclass(frozen=True)
class CompressionSpec:
    """One compressed model: ``method`` at channel ``ratio`` with ``schedule`` of ``steps`` from ``variant``."""

    method: str
    ratio: float
    schedule: str = "oneshot"
    steps: int = 1
    distillation: bool = True
    variant: str = "baseline"
    allocation: str | None = None
    rl_cost: str = "macs"
    rl_target: str = "uniform"
    equal_macs: bool = False

    @property
    def model_id(self) -> str:
        kd = "" if self.distillation else "_nokd"
        allocation = "" if self.allocation is None else f"_{self.allocation}"
        if self.allocation == "rl" and self.rl_cost != "macs":
            allocation += f"_{self.rl_cost}"
        if self.allocation == "rl" and self.rl_target != "uniform":
            allocation += f"_at_{self.rl_target}"
        if self.equal_macs:
            allocation += "_equal_macs"
        return f"{self.variant}_{self.method}_{round(100 * self.ratio)}_{self.schedule}{kd}{allocation}"

    @property
    def label(self) -> str:
        """How the report names the model."""
        text = f"{self.variant} {self.method} {round(100 * self.ratio)}% {self.schedule}"
        if self.allocation is not None:
            at = f" at the {self.rl_target} allocation's cost" if self.rl_target != "uniform" else ""
            detail = f" ({self.rl_cost}{at})" if self.allocation == "rl" else " (equal MACs)" if self.equal_macs else ""
            text += f", {self.allocation}{detail} allocation"
        return text


@dataclass(frozen=True)
class StudyPlan:
    """A parsed plan (see the module docstring)."""

    name: str
    preset: str
    folds: int
    seeds: tuple[int, ...]
    teacher_epochs: int
    finetune_epochs: int
    bundle_settings: dict[str, Any]
    compressed: tuple[CompressionSpec, ...]
    shared_pruned: CompressionSpec
    narrow_reference: str
    quantize: tuple[str, ...] = ()
    quantize_formats: tuple[str, ...] = ("onnx_int8", "onnx_fp16")
    inference: dict[str, Any] = field(default_factory=dict)
    postprocessing: dict[str, dict[str, Any]] = field(default_factory=dict)
    cka: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready record of the plan (for the results)."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("compressed", "shared_pruned")}
        out["compressed"] = [c.__dict__ | {"model_id": c.model_id} for c in self.compressed]
        out["shared_pruned"] = self.shared_pruned.__dict__ | {"model_id": self.shared_pruned.model_id}
        return out


def _spec(path: Path, key: str, raw: Any, variant: str) -> CompressionSpec:
    if not isinstance(raw, dict):
        raise ValueError(f"plan {path}: '{key}' must be an object with method, ratio, schedule")
    known = {"method", "ratio", "schedule", "steps", "distillation", "allocation", "rl_cost", "rl_target", "equal_macs"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"plan {path}: '{key}' has unknown keys {unknown}")
    spec = CompressionSpec(
        method=str(raw.get("method")),
        ratio=float(raw.get("ratio", -1)),
        schedule=str(raw.get("schedule", "oneshot")),
        steps=int(raw.get("steps", 1)),
        distillation=bool(raw.get("distillation", True)),
        variant=variant,
        allocation=None if raw.get("allocation") is None else str(raw["allocation"]),
        rl_cost=str(raw.get("rl_cost", "macs")),
        rl_target=str(raw.get("rl_target", "uniform")),
        equal_macs=bool(raw.get("equal_macs", False)),
    )
    if spec.method not in METHODS or spec.method == "snip":
        raise ValueError(f"plan {path}: '{key}' method {spec.method!r} is not a structured criterion of {METHODS}")
    if not 0 < spec.ratio < 1:
        raise ValueError(f"plan {path}: '{key}' ratio must be in (0, 1), got {raw.get('ratio')!r}")
    if spec.schedule not in SCHEDULES:
        raise ValueError(f"plan {path}: '{key}' schedule must be one of {SCHEDULES}, got {spec.schedule!r}")
    expected = {"oneshot": 1, "levelwise": len(LAYER_GROUPS)}.get(spec.schedule)
    if expected is not None and spec.steps != expected:
        raise ValueError(f"plan {path}: '{key}' a {spec.schedule} schedule has steps {expected}, got {spec.steps}")
    try:  # the compression step's own checks of the allocation keys, with its messages
        PruningSettings(
            spec.method,
            spec.ratio,
            allocation=spec.allocation,
            rl_cost=spec.rl_cost,
            rl_target=spec.rl_target,
            equal_macs=spec.equal_macs,
        )
    except ValueError as e:
        raise ValueError(f"plan {path}: '{key}' {str(e).removeprefix('config key ')}") from e
    return spec


def load_plan(path: str | Path) -> StudyPlan:
    """Read and check the plan at ``path``.

    Raises:
        ValueError: naming the file and the key that is missing or wrong.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"plan {path} not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"plan {path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"plan {path} must be a JSON object")
    required = ("name", "preset", "folds", "seeds", "teacher_epochs", "finetune_epochs", "bundle_settings")
    required += ("compressed", "shared_pruned", "narrow_reference")
    missing = [k for k in required if k not in raw]
    if missing:
        raise ValueError(f"plan {path}: missing key(s) {missing}")
    compressed = tuple(_spec(path, f"compressed[{i}]", c, "baseline") for i, c in enumerate(raw["compressed"]))
    if not compressed:
        raise ValueError(f"plan {path}: 'compressed' is empty")
    plan = StudyPlan(
        name=str(raw["name"]),
        preset=str(raw["preset"]),
        folds=int(raw["folds"]),
        seeds=tuple(int(s) for s in raw["seeds"]),
        teacher_epochs=int(raw["teacher_epochs"]),
        finetune_epochs=int(raw["finetune_epochs"]),
        bundle_settings=dict(raw["bundle_settings"]),
        compressed=compressed,
        shared_pruned=_spec(path, "shared_pruned", raw["shared_pruned"], "shared_depthwise"),
        narrow_reference=str(raw["narrow_reference"]),
        quantize=tuple(raw.get("quantize", ())),
        quantize_formats=tuple(raw.get("quantize_formats", ("onnx_int8", "onnx_fp16"))),
        inference=dict(raw.get("inference", {})),
        postprocessing=dict(raw.get("postprocessing", {})),
        cka=dict(raw.get("cka", {})),
        latency=dict(raw.get("latency", {})),
        search=dict(raw.get("search", {})),
        source=str(path),
    )
    ids = {c.model_id for c in compressed}
    if len(ids) != len(compressed):
        raise ValueError(f"plan {path}: 'compressed' lists the same model twice")
    if plan.narrow_reference not in ids:
        raise ValueError(f"plan {path}: 'narrow_reference' {plan.narrow_reference!r} is not one of {sorted(ids)}")
    for spec in (*compressed, plan.shared_pruned):
        if plan.finetune_epochs % spec.steps:
            raise ValueError(
                f"plan {path}: finetune_epochs {plan.finetune_epochs} is not divisible by the {spec.steps} steps of "
                f"{spec.model_id} (equal total budget)"
            )
    unknown = sorted(set(plan.quantize_formats) - {"onnx_int8", "onnx_fp16"})
    if unknown:
        raise ValueError(f"plan {path}: 'quantize_formats' has unknown formats {unknown}")
    if plan.folds < 2 or not plan.seeds or plan.teacher_epochs < 1 or plan.finetune_epochs < 1:
        raise ValueError(f"plan {path}: folds >= 2, at least one seed and epochs >= 1 are needed")
    return plan
