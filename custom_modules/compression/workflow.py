"""The compression step of ``bundles/raagr2_pruned/configs/compress.json``: teacher -> pruned bundle.

:class:`CompressionWorkflow` is wired by the config to the bundle's own network, optimizer, trainer (used
for fine-tuning and sparse training) and an evaluator for the report. ``run()``:

1. loads the teacher state_dict (``weights_only=True``) into the network (kept at initialisation for the
   ``snip*`` methods, which score the freshly initialised network) and a frozen copy, the teacher;
2. evaluates the teacher on the report split;
3. prunes step by step (:mod:`.schedule`) with the criterion's importance (:mod:`.criteria`) on
   :class:`.engine.StructuredPruner`, or, for ``snip``, computes unstructured masks (:mod:`.snip`);
   fine-tunes after each step with the trainer (optionally distilling from the teacher), after evaluating
   the last pruned state before its fine-tuning;
4. evaluates again and writes a standalone bundle ``<output_dir>/<name>`` plus its compression report.

Each finished step is checkpointed atomically in ``<output_dir>/<name>.work/progress.pt`` (record, weights
and masks in one file); a killed run started again with the same settings resumes after the last finished
step.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine
from torch import nn

from custom_modules.bundle_tools.pruned import write_pruned_bundle
from custom_modules.handlers import RegionMetricsWriter, save_atomic
from custom_modules.networks.complexity import FLOP_COUNTER, count_parameters, slice_latency_ms
from custom_modules.report.summary import region_summary

from .criteria import SlimmingRegularizer, get_criterion, make_importance, pruner_class, scoring_mode
from .distillation import KnowledgeDistillationLoss
from .engine import StructuredPruner, reset_optimizer
from .schedule import LAYER_GROUPS, make_schedule
from .snip import MaskEnforcer, apply_masks, count_masked_zeros, iterative_snip_masks, snip_masks, snip_saliency
from .structure import merge_split_convs

__all__ = ["VARIANTS", "CompressionWorkflow", "variant_sharing", "pruned_bundle_name", "load_teacher_state"]

logger = logging.getLogger(__name__)

#: ``variant`` key -> ``RAAGR2Net(sharing=...)``.
VARIANTS = {"baseline": "none", "shared_depthwise": "depthwise"}

REGION_ORDER = ("tc", "wt", "et")  # channel order of the networks' outputs (MONAI BraTS classes)


def variant_sharing(variant: str) -> str:
    """``RAAGR2Net`` ``sharing`` of a ``variant`` (``baseline`` or ``shared_depthwise``)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {tuple(VARIANTS)}, got {variant!r}")
    return VARIANTS[variant]


def pruned_bundle_name(method: str, ratio: float, variant: str = "baseline") -> str:
    """``raagr2_pruned_<method>_<N>`` (``N`` = percent), with ``_shared`` for the shared-depthwise variant."""
    suffix = "" if variant == "baseline" else "_shared"
    return f"raagr2_pruned_{method}_{int(round(ratio * 100))}{suffix}"


def load_teacher_state(path: str | os.PathLike, network: nn.Module) -> dict[str, torch.Tensor]:
    """The teacher state_dict at ``path`` (a plain state_dict, or a training checkpoint with ``network``),
    loaded with ``weights_only=True`` and checked against ``network``.

    Raises:
        ValueError: naming the file when it is missing, not a state_dict, or does not fit the network.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"teacher_ckpt {path} not found: pass the teacher's state_dict (e.g. models/model.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"teacher_ckpt {path} cannot be read as a weights-only checkpoint: {e}") from None
    if isinstance(state, Mapping) and "network" in state and isinstance(state["network"], Mapping):
        state = state["network"]
    if not isinstance(state, Mapping):
        raise ValueError(f"teacher_ckpt {path} is not a state_dict")
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"teacher_ckpt {path} does not fit the network (check `variant` and `network_def`): "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, "
            f"{len(mismatched)} shape mismatches {mismatched[:3]}"
        )
    return dict(state)


def _finite_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.fmean(finite) if finite else float("nan")


class CompressionWorkflow:
    """Compress a teacher RAAGR2-Net into a pruned, fine-tuned, standalone MONAI bundle.

    Args:
        network: the bundle's network (``@network``), unpruned; pruned in place.
        teacher_ckpt: teacher state_dict file (same ``variant``).
        method: one of :data:`custom_modules.compression.criteria.METHODS`.
        ratio: channel ratio removed from every pruned layer (structured), or weight sparsity (``snip``).
        schedule: ``oneshot``, ``iterative`` or ``layerwise``.
        variant: ``baseline`` or ``shared_depthwise`` (recorded; the network is built by the config).
        bundle_root: the compression bundle (its configs, except ``compress.json``, become the new bundle's).
        output_dir: folder under which the new bundle folder is written.
        trainer: the bundle's ``SupervisedTrainer`` (fine-tuning and sparse training).
        optimizer: the trainer's optimizer (pointed at the pruned parameters after each step).
        evaluator: a ``SupervisedEvaluator`` on the report split with ``save_details`` metrics named
            ``dice_metric`` and ``hd95_metric`` (per-case, per-region).
        task_loss: the bundle's training loss (scoring, and the task term of distillation).
        validator: the trainer's validation evaluator (``@validate#evaluator``); when given, each fine-tuning
            phase ends with its best weights by the validator's key metric (as the baseline's ``model.pt``).
        epochs: fine-tuning epochs after each step (0: none).
        roi_size: slice size ``[H, W]`` used to trace the network and count FLOPs.
        iterative_steps: number of steps of the ``iterative`` schedule.
        allocation: ``uniform`` or ``global``; ``None``: the criterion's default.
        max_layer_ratio: per-layer cap of the global allocation.
        round_to: keep channel counts multiples of this (e.g. 8: faster CPU/GPU kernels; prunes a little more).
        scoring_batches: training batches used by data-driven criteria (``taylor``, ``lrp``).
        distillation: fine-tune with :class:`KnowledgeDistillationLoss` from the teacher.
        kd_alpha, kd_temperature, kd_feature_weight: distillation weights (see the loss).
        slimming_reg: L1 coefficient on BN gamma during slimming's sparse training.
        sparse_epochs: sparse-training epochs before each slimming step (``None``: ``epochs``).
        onnx_check: ONNX Runtime parity check after every pruning step.
        measure_latency: time teacher and pruned network on one ``roi_size`` slice (CPU, same process).
        eval_split: name of the report split (recorded in the report).
        dice_metric, hd95_metric: metric names in ``evaluator``.
    """

    def __init__(
        self,
        network: nn.Module,
        teacher_ckpt: str,
        method: str,
        ratio: float,
        schedule: str,
        variant: str,
        bundle_root: str,
        output_dir: str,
        trainer: Engine,
        optimizer: torch.optim.Optimizer,
        evaluator: Engine,
        task_loss: nn.Module,
        validator: Engine | None = None,
        epochs: int = 1,
        roi_size: Sequence[int] = (192, 192),
        iterative_steps: int = 3,
        allocation: str | None = None,
        max_layer_ratio: float = 0.8,
        round_to: int | None = None,
        scoring_batches: int = 2,
        distillation: bool = True,
        kd_alpha: float = 0.5,
        kd_temperature: float = 2.0,
        kd_feature_weight: float = 0.0,
        slimming_reg: float = 1e-4,
        sparse_epochs: int | None = None,
        onnx_check: bool = True,
        measure_latency: bool = True,
        eval_split: str = "test",
        dice_metric: str = "report_dice",
        hd95_metric: str = "report_hd95",
    ) -> None:
        self.criterion = get_criterion(method)
        variant_sharing(variant)
        make_schedule(schedule, float(ratio), int(iterative_steps))  # validates schedule and ratio early
        self.network = network
        self.teacher_ckpt = str(teacher_ckpt)
        self.ratio = float(ratio)
        self.schedule = schedule
        self.variant = variant
        if getattr(network, "sharing", None) != variant_sharing(variant):
            raise ValueError(
                f"variant {variant!r} needs RAAGR2Net(sharing={variant_sharing(variant)!r}), "
                f"the configured network has sharing={getattr(network, 'sharing', None)!r}"
            )
        #: the new bundle's unpruned ``network_def``
        self.network_config = {"_target_": f"{type(network).__module__.rsplit('.', 1)[0]}.{type(network).__name__}", **network.init_args}
        self.bundle_root = Path(bundle_root)
        self.output_dir = Path(output_dir)
        self.trainer = trainer
        self.optimizer = optimizer
        self.learning_rates = [g["lr"] for g in optimizer.param_groups]
        self.evaluator = evaluator
        self.task_loss = task_loss
        self.validator = validator
        self.epochs = int(epochs)
        self.example_shape = (1, int(network.init_args["in_channels"]), *(int(s) for s in roi_size))
        self.iterative_steps = int(iterative_steps)
        self.allocation = allocation or self.criterion.default_allocation
        self.max_layer_ratio = float(max_layer_ratio)
        self.round_to = int(round_to) if round_to else None
        self.scoring_batches = int(scoring_batches)
        self.distillation = bool(distillation)
        self.kd = {"alpha": float(kd_alpha), "temperature": float(kd_temperature), "feature_weight": float(kd_feature_weight)}
        self.slimming_reg = float(slimming_reg)
        self.sparse_epochs = self.epochs if sparse_epochs is None else int(sparse_epochs)
        self.onnx_check = bool(onnx_check)
        self.measure_latency = bool(measure_latency)
        self.eval_split = eval_split
        self.name = pruned_bundle_name(method, self.ratio, variant)
        self.work_dir = self.output_dir / f"{self.name}.work"
        self.metrics_writer = RegionMetricsWriter(
            output_dir=str(self.work_dir), dice_metric=dice_metric, hd95_metric=hd95_metric, prefix="report"
        )
        self.metrics_writer.attach(evaluator)

    # ------------------------------------------------------------------------------------------------------
    # pieces

    def _device(self) -> torch.device:
        return next(self.network.parameters()).device

    def _settings(self) -> dict[str, Any]:
        return {
            "bundle": self.name,
            "method": self.criterion.name,
            "criterion_reference": self.criterion.reference,
            "ratio": self.ratio,
            "schedule": self.schedule,
            "allocation": self.allocation,
            "variant": self.variant,
            "teacher": self.teacher_ckpt,
        }

    def _batches(self, count: int) -> list[dict[str, torch.Tensor]]:
        """The first ``count`` training batches (image/label on the network's device)."""
        device = self._device()
        batches = []
        for batch in islice(iter(self.trainer.data_loader), count):
            item = batch[0] if isinstance(batch, list) else batch
            batches.append({k: torch.as_tensor(item[k]).to(device) for k in ("image", "label")})
        if not batches:
            raise ValueError("the training datalist gave no batch to score the network with")
        return batches

    def evaluate(self, network: nn.Module, stage: str) -> dict[str, Any]:
        """Per-case and mean region Dice/HD95 of ``network`` on the report split."""
        held = self.evaluator.network
        self.evaluator.network = network
        try:
            self.evaluator.run()
        finally:
            self.evaluator.network = held
        rows = self.metrics_writer.rows(self.evaluator)
        summary = region_summary(rows) if rows else {}
        means = {
            kind: {r: summary.get(f"{r}_{kind}", {}).get("mean", float("nan")) for r in ("wt", "tc", "et")}
            for kind in ("dice", "hd95")
        }
        logger.info(f"{stage}: Dice " + ", ".join(f"{r.upper()} {v:.4f}" for r, v in means["dice"].items()))
        return {"cases": rows, **means}

    def _finetune(self, epochs: int, handlers: Sequence[Any] = ()) -> None:
        """Train the (pruned) network for ``epochs`` with the bundle trainer, optimizer reset to the new
        parameters and the initial learning rate."""
        if epochs <= 0:
            return
        reset_optimizer(self.optimizer, self.network)
        for group, lr in zip(self.optimizer.param_groups, self.learning_rates):
            group["lr"] = lr
        attached = []
        for handler in handlers:
            handler.attach(self.trainer)
            attached.append(handler)
        best = _BestWeights(self.network)
        if self.validator is not None:
            best.attach(self.validator)
        self.trainer.state.epoch = 0
        self.trainer.state.iteration = 0
        self.trainer.state.max_epochs = epochs
        try:
            self.trainer.run()
        finally:
            for handler in attached:
                _detach(self.trainer, handler)
            if self.validator is not None:
                _detach(self.validator, best)
        best.restore()

    # ------------------------------------------------------------------------------------------------------
    # resume

    def _signature(self) -> dict[str, Any]:
        return {**self._settings(), "epochs": self.epochs, "iterative_steps": self.iterative_steps, "round_to": self.round_to}

    def _load_progress(self) -> dict[str, Any] | None:
        """The last finished step's checkpoint (``progress.pt``: progress record, weights and masks in one
        atomically written file), or ``None`` when there is none for these settings."""
        path = self.work_dir / "progress.pt"
        if not path.is_file():
            return None
        saved = torch.load(path, map_location=self._device(), weights_only=True)
        progress = json.loads(saved["progress"])
        if progress.get("signature") != json.loads(json.dumps(self._signature())):
            logger.warning(f"{path} is from a run with other settings; starting over")
            return None
        progress["_saved"] = saved
        return progress

    def _save_progress(self, progress: dict[str, Any], masks: Mapping[str, torch.Tensor] | None = None) -> None:
        """Checkpoint a finished step in one atomic write; ``progress.json`` is a readable copy only."""
        record = json.dumps({k: v for k, v in progress.items() if k != "_saved"})
        save_atomic(
            {"progress": record, "network": self.network.state_dict(), "masks": dict(masks or {})},
            self.work_dir / "progress.pt",
        )
        tmp = self.work_dir / "progress.json.tmp"
        tmp.write_text(record)
        os.replace(tmp, self.work_dir / "progress.json")

    # ------------------------------------------------------------------------------------------------------
    # main

    def run(self) -> Path:
        """Compress; returns the new bundle folder."""
        device = self._device()
        state = load_teacher_state(self.teacher_ckpt, self.network)
        teacher = copy.deepcopy(self.network)
        teacher.load_state_dict(state)
        teacher.eval().requires_grad_(False)
        if not self.criterion.from_init:
            self.network.load_state_dict(state)
        self.work_dir.mkdir(parents=True, exist_ok=True)

        report: dict[str, Any] = self._settings()
        report.update(flop_counter=f"{FLOP_COUNTER} (FLOPs = 2 x MACs)", input_shape=list(self.example_shape))
        report["eval_split"] = self.eval_split
        progress = self._load_progress() or {"signature": self._signature(), "done": 0, "steps": [], "history": []}
        if "teacher_eval" not in progress:
            progress["teacher_eval"] = self.evaluate(teacher, "teacher")

        pruner = StructuredPruner(
            self.network,
            self.example_shape,
            allocation=self.allocation if self.criterion.structured else "uniform",
            max_layer_ratio=self.max_layer_ratio,
            round_to=self.round_to,
            onnx_check=self.onnx_check,
        )
        if progress["done"]:
            pruner.replay(progress["history"])
            saved = progress.pop("_saved")
            self.network.load_state_dict(saved["network"])
            masks = {k: v.to(device) for k, v in saved["masks"].items()}
            logger.info(f"resuming {self.name} after step {progress['done']} from {self.work_dir}")
        else:
            masks = {}

        kd_loss = None
        if self.distillation:
            kd_loss = KnowledgeDistillationLoss(self.task_loss, teacher, self.network, **self.kd)
            self.trainer.loss_function = kd_loss
        try:
            if self.criterion.structured:
                self._prune_structured(pruner, progress)
            else:
                masks = self._prune_snip(pruner, progress, masks)
            finetuned = self.evaluate(self.network, "after fine-tuning")
        finally:
            if kd_loss is not None:
                kd_loss.close()
                self.trainer.loss_function = self.task_loss

        report["layers"] = pruner.layer_channels()
        merge_split_convs(self.network)  # the deployed form: one grouped conv is faster than its split slots
        report.update(self._results(pruner, teacher, progress, finetuned))
        bundle_dir = write_pruned_bundle(
            template_dir=self.bundle_root,
            bundle_dir=self.output_dir / self.name,
            network_config=self.network_config,
            pruning_history=pruner.history if self.criterion.structured else None,
            state_dict=self.network.state_dict(),
            report=report,
        )
        logger.info(f"wrote {bundle_dir}")
        return bundle_dir

    def _results(
        self, pruner: StructuredPruner, teacher: nn.Module, progress: Mapping[str, Any], finetuned: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The measured part of the report: steps, complexity, latency and the three evaluations."""
        device = self._device()
        final = pruner.check() if self.criterion.structured else {"params": count_parameters(self.network), "flops": pruner.teacher_flops}
        nonzero = {name: sum(int(torch.count_nonzero(p)) for p in net.parameters()) for name, net in (("teacher", teacher), ("pruned", self.network))}
        results: dict[str, Any] = {
            "steps": progress["steps"],
            "snip": progress.get("snip"),
            "complexity": {
                "teacher": {"params": pruner.teacher_params, "nonzero_params": nonzero["teacher"], "flops": pruner.teacher_flops},
                "pruned": {"params": final["params"], "nonzero_params": nonzero["pruned"], "flops": final["flops"]},
            },
            "finetune": {"epochs_per_step": self.epochs, "distillation": self.distillation, **self.kd},
        }
        if self.measure_latency:
            results["latency_ms"] = {
                "teacher": slice_latency_ms(teacher, self.example_shape, device=device),
                "pruned": slice_latency_ms(self.network, self.example_shape, device=device),
                "threads": torch.get_num_threads(),
                "device": str(device),
            }
        stages = {"teacher": progress["teacher_eval"], "pruned_before_finetune": progress["before_finetune"], "finetuned": finetuned}
        results["cases"] = [row["case"] for row in stages["teacher"]["cases"]]
        for kind in ("dice", "hd95"):
            results[kind] = {stage: result[kind] for stage, result in stages.items()}
        results["per_case"] = {stage: result["cases"] for stage, result in stages.items()}
        return results

    def _prune_structured(self, pruner: StructuredPruner, progress: dict[str, Any]) -> None:
        steps = make_schedule(self.schedule, self.ratio, self.iterative_steps)
        importance_class = pruner_class(self.criterion)
        for i, step in enumerate(steps):
            if i < progress["done"]:
                continue
            last = i == len(steps) - 1
            if self.criterion.sparse_training:
                regularizer = SlimmingRegularizer(
                    lambda: pruner.make_pruner(make_importance(self.criterion, self.network), pruner_class=importance_class),
                    self.network,
                    reg=self.slimming_reg,
                )
                self._finetune(self.sparse_epochs, [regularizer])
            batches = self._batches(1 if self.criterion.from_init else self.scoring_batches) if self.criterion.needs_batches else []
            importance = make_importance(self.criterion, self.network, batches, self.task_loss)
            with scoring_mode(self.network):
                record = pruner.step(importance, step, pruner_class=importance_class)
            self.network.zero_grad(set_to_none=True)
            progress["steps"].append(record)
            progress["history"] = pruner.history
            # from-init methods prune every step at initialisation and train once at the end (as SNIP does)
            if last:
                progress["before_finetune"] = self.evaluate(self.network, "pruned, before fine-tuning")
            if last or not self.criterion.from_init:
                self._finetune(self.epochs)
            progress["done"] = i + 1
            self._save_progress(progress)

    def _prune_snip(self, pruner: StructuredPruner, progress: dict[str, Any], masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Unstructured SNIP at initialisation: masks from one batch (``oneshot``), FORCE-style re-scoring
        (``iterative``) or one layer group at a time (``layerwise``); then training with masks enforced."""
        if progress["done"] == 0:
            batch = self._batches(1)[0]
            head = [pruner.network.get_submodule(n) for n in pruner.never_prune]
            allocation = self.allocation
            with scoring_mode(self.network, batch_stats=True):
                if self.schedule == "oneshot":
                    masks = snip_masks(snip_saliency(self.network, batch, self.task_loss, exclude=head), self.ratio, allocation)
                elif self.schedule == "iterative":
                    masks = iterative_snip_masks(
                        self.network, batch, self.task_loss, self.ratio, self.iterative_steps, exclude=head, allocation=allocation
                    )
                else:
                    masks = {}
                    for group in LAYER_GROUPS.values():
                        outside = head + [m for n, m in self.network.named_children() if n not in group]
                        apply_masks(self.network, masks)
                        saliency = snip_saliency(self.network, batch, self.task_loss, exclude=outside)
                        masks.update(snip_masks(saliency, self.ratio, allocation))
            apply_masks(self.network, masks)
            masked = sum(int((~m).sum()) for m in masks.values())
            progress["snip"] = {
                "sparsity": self.ratio,
                "masked_weights": masked,
                "zeros_before_finetune": count_masked_zeros(self.network, masks),
            }
            progress["steps"] = [{"step": 1, "target_ratio": self.ratio, "layers": "all", "params": count_parameters(self.network), "masked_weights": masked}]
            progress["before_finetune"] = self.evaluate(self.network, "masked at initialisation, before training")
            progress["done"] = 1
            self._save_progress(progress, masks)
        if progress["done"] == 1:
            self._finetune(self.epochs, [MaskEnforcer(self.network, masks)])
            progress["snip"]["zeros_after_finetune"] = count_masked_zeros(self.network, masks)
            progress["done"] = 2
            self._save_progress(progress, masks)
        return masks


class _BestWeights:
    """Keep a copy of ``network``'s weights at the best key metric of a validation evaluator (higher is better)."""

    def __init__(self, network: nn.Module) -> None:
        self.network = network
        self.best: float | None = None
        self.state: dict[str, torch.Tensor] | None = None

    def attach(self, engine: Engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self.update)

    def update(self, engine: Engine) -> None:
        name = getattr(engine.state, "key_metric_name", None)
        value = engine.state.metrics.get(name) if name else None
        if value is not None and not math.isnan(float(value)) and (self.best is None or float(value) > self.best):
            self.best = float(value)
            self.state = {k: v.detach().clone() for k, v in self.network.state_dict().items()}

    def restore(self) -> None:
        if self.state is not None:
            self.network.load_state_dict(self.state)
            logger.info(f"fine-tuning kept the weights of its best validation epoch ({self.best:.4f})")


def _detach(engine: Engine, handler: Any) -> None:
    """Remove every event handler that ``handler`` (an object with ``attach``) registered on ``engine``."""
    for event in list(engine._event_handlers):
        for registered in list(engine._event_handlers[event]):
            func = registered[0]
            owner = getattr(func, "__self__", None) or getattr(getattr(func, "__wrapped__", None), "__self__", None)
            if owner is handler or func is handler:
                engine.remove_event_handler(func, event)
