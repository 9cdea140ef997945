"""The MONAI glue of the compression loop: ``bundles/raagr2_pruned/configs/compress.json``'s ``compression``.

:class:`CompressionStep` supplies :class:`.loop.CompressionLoop` with the bundle's own engines, all built by the
config: the ``SupervisedTrainer`` (whose ``loss_function`` the config sets to the distillation loss), its
optimizer and validator, one ``SupervisedEvaluator`` for the teacher and one for the network being pruned. It
uses Ignite's public API only: handlers are added with ``add_event_handler`` and removed through the
``RemovableEventHandle`` it returns, and a fine-tuning phase restarts the trainer with ``load_state_dict``.
Then it writes the standalone bundle ``<output_dir>/<name>`` with its compression report; the loop's resume
record lives in ``<output_dir>/<name>.work/``.

Before any work the step refuses what would lose a result or mix two runs: an existing bundle folder (unless
``overwrite``), a work folder in use by another run (an exclusive lock, held for the run), and a work folder
holding the work of a run with another fingerprint (settings, teacher weights' sha256, datalist content).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from torch import nn

from custom_modules.artefacts import sha256_file
from custom_modules.choice import config_bool
from custom_modules.constants import REGION_DISPLAY_ORDER
from custom_modules.handlers import RegionMetricsWriter
from custom_modules.handlers.region_metrics_writer import SCORED
from custom_modules.metrics import HD95_DEFINITIONS
from custom_modules.metrics.summary import region_summary
from custom_modules.networks.variants import variant_sharing

from .bundle_writer import check_bundle_target, pruned_bundle_name, remove_staging_leftovers, write_pruned_bundle
from .engine import reset_optimizer
from .hooks import TrainingHooks
from .loop import CompressionLoop, CompressionOutcome, LoopCallbacks, claim_work_folder, work_folder_lock
from .progress import ProgressStore
from .settings import FineTuneSettings, PruningSettings, ReportSettings, settings_fingerprint

__all__ = ["CompressionStep", "attach_training_hooks"]

logger = logging.getLogger(__name__)


def attach_training_hooks(engine: Engine, hooks: TrainingHooks) -> list[Any]:
    """Register ``hooks`` on a MONAI trainer: ``on_start`` on ``Events.STARTED``, ``after_backward`` on
    ``IterationEvents.BACKWARD_COMPLETED`` (between ``loss.backward()`` and ``optimizer.step()`` in
    ``SupervisedTrainer``), ``after_step`` on ``IterationEvents.MODEL_COMPLETED`` (right after the optimizer
    step; ``Events.ITERATION_COMPLETED`` on engines without MONAI's events). Returns the removable handles.

    Raises:
        ValueError: ``after_backward`` hooks on an engine without MONAI's ``IterationEvents``.
    """
    monai_events = engine.has_registered_events(IterationEvents.BACKWARD_COMPLETED)
    if hooks.after_backward and not monai_events:
        raise ValueError("the engine must register monai.engines.utils.IterationEvents (SupervisedTrainer does).")
    after_step = IterationEvents.MODEL_COMPLETED if monai_events else Events.ITERATION_COMPLETED
    handles = []
    for event, callbacks in (
        (Events.STARTED, hooks.on_start),
        (IterationEvents.BACKWARD_COMPLETED, hooks.after_backward),
        (after_step, hooks.after_step),
    ):
        for callback in callbacks:
            handles.append(engine.add_event_handler(event, _call_without_engine(callback)))
    return handles


def _call_without_engine(callback: Any) -> Any:
    def handler(engine: Engine) -> None:
        callback()

    return handler


class _BestWeights:
    """Keep a copy of ``network``'s weights at the best key metric of a validation evaluator (higher is better)."""

    def __init__(self, network: nn.Module) -> None:
        self.network = network
        self.best: float | None = None
        self.state: dict[str, torch.Tensor] | None = None

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


class CompressionStep:
    """Compress a teacher RAAGR2-Net into a pruned, fine-tuned, standalone MONAI bundle.

    Args:
        network: the bundle's network (``@network``), unpruned; pruned in place.
        teacher: the frozen teacher (``raagr2_tools.compression.load_teacher``), same variant.
        trainer: the bundle's ``SupervisedTrainer`` (fine-tuning and sparse training) on ``network``.
        optimizer: the trainer's optimizer (pointed at the pruned parameters before each phase).
        evaluators: ``{"teacher": evaluator, "student": evaluator}``, ``SupervisedEvaluator`` s on the report
            split with ``save_details`` metrics named by ``report``, on ``teacher`` and ``network``.
        task_loss: the bundle's training loss (scoring).
        pruning, finetune, report: :mod:`.settings`.
        variant: ``baseline`` or ``shared_depthwise`` (must match ``network``).
        teacher_ckpt: the teacher's file (recorded).
        bundle_root: the compression bundle (its configs, except ``compress.json``, become the new bundle's).
        output_dir: folder under which the new bundle folder is written.
        validator: the trainer's validation evaluator; when given, each fine-tuning phase ends with its best
            weights by the validator's key metric (as the baseline's ``model.pt``).
        overwrite: replace an existing ``<output_dir>/<name>`` bundle (else it is refused, before any work).
        datalist: the datalist file the trainer and evaluators read (its content is part of the fingerprint).
        latency_table: the per-layer latency table of the latency-aware learned allocation (``rl_cost:
            latency``); reused by every run whose network, input size, backend and CPU it was measured for.

    Raises:
        FileExistsError: the bundle folder exists, is not empty and ``overwrite`` is false.
        RuntimeError: the work folder is in use by another run, or holds the work of a run with another
            fingerprint.
    """

    def __init__(
        self,
        network: nn.Module,
        teacher: nn.Module,
        trainer: Engine,
        optimizer: torch.optim.Optimizer,
        evaluators: Mapping[str, Engine],
        task_loss: nn.Module,
        pruning: PruningSettings,
        finetune: FineTuneSettings,
        report: ReportSettings,
        variant: str,
        teacher_ckpt: str,
        bundle_root: str,
        output_dir: str,
        validator: Engine | None = None,
        overwrite: bool = False,
        datalist: str | None = None,
        latency_table: str | None = None,
    ) -> None:
        if getattr(network, "sharing", None) != variant_sharing(variant):
            raise ValueError(
                f"variant {variant!r} needs RAAGR2Net(sharing={variant_sharing(variant)!r}), "
                f"the configured network has sharing={getattr(network, 'sharing', None)!r}"
            )
        missing = {"teacher", "student"} - set(evaluators)
        if missing:
            raise ValueError(f"evaluators needs the keys 'teacher' and 'student', missing {sorted(missing)}")
        self.network, self.teacher, self.trainer, self.optimizer = network, teacher, trainer, optimizer
        self.validator, self.task_loss = validator, task_loss
        self.pruning, self.finetune_settings, self.report = pruning, finetune, report
        self.variant, self.teacher_ckpt = variant, str(teacher_ckpt)
        self.bundle_root, self.output_dir = Path(bundle_root), Path(output_dir)
        self.learning_rates = [g["lr"] for g in optimizer.param_groups]
        #: the new bundle's unpruned ``network_def``
        self.network_config = {
            "_target_": f"{type(network).__module__.rsplit('.', 1)[0]}.{type(network).__name__}",
            **network.init_args,
        }
        self.name = pruned_bundle_name(pruning.method, pruning.ratio, variant)
        self.work_dir = self.output_dir / f"{self.name}.work"
        self.bundle_dir = self.output_dir / self.name
        self.overwrite = config_bool(overwrite, "overwrite")
        self.datalist = None if datalist is None else str(datalist)
        self.latency_table = None if latency_table is None else str(latency_table)
        check_bundle_target(self.bundle_dir, self.overwrite)  # now, not after the hours of pruning
        if self.overwrite and self.bundle_dir.exists():
            logger.warning(f"{self.bundle_dir} exists and will be replaced at the end (overwrite is true)")
        self.fingerprint = self._fingerprint()
        self.lock = work_folder_lock(self.work_dir)
        self.lock.acquire()
        try:
            remove_staging_leftovers(self.output_dir, self.name)
            check_bundle_target(self.bundle_dir, self.overwrite)  # a restored old bundle counts too
            claim_work_folder(self.work_dir, self.fingerprint)
        except BaseException:
            self.lock.release()
            raise
        self.evaluators = dict(evaluators)
        self.writers = {}
        for which, evaluator in self.evaluators.items():
            writer = RegionMetricsWriter(
                output_dir=str(self.work_dir),
                dice_metric=report.dice_metric,
                hd95_metric=report.hd95_metric,
                prefix="report",
                filename=f"{which}_per_case_metrics",
                hd95_definition=report.hd95_definition,
            )
            writer.attach(evaluator)
            self.writers[which] = writer

    # ------------------------------------------------------------------------------------------------------
    # the loop's callbacks

    def scoring_batches(self, count: int) -> list[dict[str, torch.Tensor]]:
        """The first ``count`` training batches (image/label on the network's device)."""
        device = next(self.network.parameters()).device
        batches = []
        for batch in islice(iter(self.trainer.data_loader), count):
            item = batch[0] if isinstance(batch, list) else batch
            batches.append({k: torch.as_tensor(item[k]).to(device) for k in ("image", "label")})
        return batches

    def evaluate(self, which: str, stage: str) -> dict[str, Any]:
        """Per-case and mean region Dice/HD95 of the teacher or the network being pruned on the report split.

        An empty report split (a caller that scores the models itself, e.g. ``benchmarks.study``) is not run:
        no cases, NaN means."""
        evaluator = self.evaluators[which]
        if len(evaluator.data_loader) == 0:
            logger.info(f"{stage}: the report split is empty, not evaluated")
            rows: list[dict[str, Any]] = []
        else:
            evaluator.run()
            rows = self.writers[which].rows(evaluator)
        summary = region_summary(rows) if rows else {}
        means = {
            kind: {r: summary.get(f"{r}_{kind}", {}).get("mean", float("nan")) for r in REGION_DISPLAY_ORDER}
            for kind in ("dice", "hd95")
        }
        logger.info(f"{stage}: Dice " + ", ".join(f"{r.upper()} {v:.4f}" for r, v in means["dice"].items()))
        return {"cases": rows, **means}

    def finetune(self, epochs: int, hooks: TrainingHooks) -> None:
        """Train the network for ``epochs`` with the bundle trainer: optimizer reset to the current parameters
        and the initial learning rate, ``hooks`` attached for the phase, best validation epoch kept."""
        reset_optimizer(self.optimizer, self.network)
        for group, lr in zip(self.optimizer.param_groups, self.learning_rates):
            group["lr"] = lr
        handles = attach_training_hooks(self.trainer, hooks)
        best = _BestWeights(self.network)
        if self.validator is not None:
            handles.append(self.validator.add_event_handler(Events.EPOCH_COMPLETED, best.update))
        self.trainer.load_state_dict(
            {"iteration": 0, "max_epochs": int(epochs), "epoch_length": self.trainer.state.epoch_length}
        )
        try:
            self.trainer.run()
        finally:
            for handle in handles:
                handle.remove()
        best.restore()

    # ------------------------------------------------------------------------------------------------------
    def _settings(self) -> dict[str, Any]:
        p = self.pruning
        return {
            "bundle": self.name,
            "method": p.criterion.name,
            "criterion_reference": p.criterion.reference,
            "ratio": p.ratio,
            "schedule": p.schedule,
            "allocation": p.resolved_allocation,
            "equal_macs": p.equal_macs,
            "variant": self.variant,
            "teacher": self.teacher_ckpt,
        }

    def _fingerprint(self) -> dict[str, Any]:
        """What decides the result: the settings, the network, the learning rates and the checksums of the
        teacher's weights and of the datalist (paths are not part of it: a moved file is the same input)."""
        return {
            "bundle": self.name,
            "variant": self.variant,
            "settings": settings_fingerprint(self.pruning, self.finetune_settings, self.report),
            "network": self.network_config,
            "learning_rates": self.learning_rates,
            "teacher_ckpt_sha256": sha256_file(self.teacher_ckpt),
            "data_list_file_path_sha256": None if self.datalist is None else sha256_file(self.datalist),
        }

    def run(self) -> Path:
        """Compress; returns the new bundle folder. The work folder's lock is held until it returns."""
        try:
            return self._run()
        finally:
            self.lock.release()

    def _run(self) -> Path:
        if not self.lock.held:  # run() again after an earlier run() released it
            self.lock.acquire()
            claim_work_folder(self.work_dir, self.fingerprint)
        loop = CompressionLoop(
            self.network,
            self.teacher,
            self.task_loss,
            self.pruning,
            self.finetune_settings,
            LoopCallbacks(scoring_batches=self.scoring_batches, finetune=self.finetune, evaluate=self.evaluate),
            store=ProgressStore(self.work_dir, self.fingerprint, name=self.name),
            measure_latency=self.report.measure_latency,
            latency_table=self.latency_table,
        )
        try:
            outcome = loop.run()
        finally:
            close = getattr(self.trainer.loss_function, "close", None)  # the distillation loss's hooks
            if callable(close):
                close()
        bundle_dir = write_pruned_bundle(
            template_dir=self.bundle_root,
            bundle_dir=self.bundle_dir,
            network_config=self.network_config,
            pruning_history=outcome.history,
            state_dict=self.network.state_dict(),
            report=self._report(outcome),
            overwrite=self.overwrite,
        )
        logger.info(f"wrote {bundle_dir}")
        return bundle_dir

    def _report(self, outcome: CompressionOutcome) -> dict[str, Any]:
        record = outcome.record
        report: dict[str, Any] = {
            **self._settings(),
            "flop_counter": outcome.measurements["flop_counter"],
            "input_shape": list(self.pruning.example_shape),
            "eval_split": self.report.eval_split,
            "layers": outcome.layers,
            "steps": record["steps"],
            "snip": record.get("snip"),
            "complexity": outcome.measurements["complexity"],
            "finetune": self.finetune_settings.record(),
        }
        for key in ("latency_ms", "final_onnx_check", "latency_check"):
            if key in outcome.measurements:
                report[key] = outcome.measurements[key]
        if record.get("allocation_search") is not None:
            report["allocation_search"] = record["allocation_search"]
        if record.get("matched_global") is not None:
            report["matched_global"] = record["matched_global"]
        stages = {
            "teacher": record["teacher_eval"],
            "pruned_before_finetune": record["before_finetune"],
            "finetuned": outcome.finetuned,
        }
        report["cases"] = [row["case"] for row in stages["teacher"]["cases"]]
        for kind in ("dice", "hd95"):
            report[kind] = {stage: result[kind] for stage, result in stages.items()}
        report["per_case"] = {stage: result["cases"] for stage, result in stages.items()}
        report["scored"] = SCORED
        report["hd95_definition"] = {
            "name": self.report.hd95_definition,
            "description": HD95_DEFINITIONS[self.report.hd95_definition],
        }
        return report
