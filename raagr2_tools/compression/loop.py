"""The compression loop in plain PyTorch: score, prune, fine-tune, evaluate, record; no training framework.

:class:`CompressionLoop` turns a network holding (or, for the ``snip*`` criteria, about to be scored at) its
teacher's weights into a pruned network in its deployed form. What training and evaluation mean is supplied
by :class:`LoopCallbacks`: the MONAI glue (:mod:`.step`) passes the bundle's trainer and evaluators, a test or
script passes a plain PyTorch loop. One run:

1. loads the teacher's weights into the network (not for ``snip``/``snip_structured``, which score the freshly
   initialised network) and evaluates the teacher;
2. per step of the schedule (:mod:`.schedule`): sparse training first for ``slimming``, scoring with the
   criterion (:mod:`.criteria`) on :class:`.engine.StructuredPruner`, then fine-tuning; or, for ``snip``,
   unstructured masks at initialisation (:mod:`.snip`), then training with the masks enforced. The last pruned
   state is evaluated before its fine-tuning;
3. evaluates the fine-tuned network, merges the split grouped convs back (the deployed, faster form), checks
   it in ONNX Runtime with the exporter that ships, and measures parameters, FLOPs and latency.

Each finished step is saved by a :class:`.progress.ProgressStore`; a killed run started again with the same
settings resumes after the last finished step. The work folder around it is guarded by
:func:`work_folder_lock` (one run at a time) and :func:`claim_work_folder` (the work is resumed only by a run
with the same fingerprint: settings, teacher weights, data).
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from custom_modules.files import write_json
from custom_modules.locks import FolderLock
from custom_modules.networks.complexity import FLOP_COUNTER, count_flops, count_parameters, slice_latency_ms
from custom_modules.networks.pruned.structure import merge_split_convs
from raagr2_tools.shipping.onnx import onnx_parity

from .criteria import (
    SlimmingRegularizer,
    importance_factory,
    make_importance,
    network_device,
    pruner_class,
    scoring_mode,
)
from .engine import PruningCheckError, StructuredPruner
from .hooks import TrainingHooks
from .latency_table import LatencyTable, compare_networks_ms, uniform_pruned
from .progress import ProgressStore
from .rl_search import (
    AllocationSearch,
    LatencyCost,
    MacsCost,
    SearchSettings,
    global_cost,
    global_ratio_at_cost,
    uniform_cost,
)
from .schedule import LAYER_GROUPS, make_schedule
from .settings import FineTuneSettings, PruningSettings
from .snip import MaskEnforcer, apply_masks, count_masked_zeros, iterative_snip_masks, snip_masks, snip_saliency

__all__ = [
    "FINGERPRINT_FILE",
    "LoopCallbacks",
    "CompressionOutcome",
    "CompressionLoop",
    "work_folder_lock",
    "claim_work_folder",
]

logger = logging.getLogger(__name__)

#: the settings and inputs of the run that owns a work folder (see :func:`claim_work_folder`)
FINGERPRINT_FILE = "fingerprint.json"
#: files of a work folder that hold work worth resuming
RESUME_FILES = ("progress.pt", "allocation_search.json")
#: the learned allocation's search record in the work folder (written after every sample)
SEARCH_RECORD = "allocation_search.json"

#: ``evaluate`` result: ``{"cases": [per-case rows], "dice": {region: mean}, "hd95": {region: mean}}``
Evaluation = dict[str, Any]


def work_folder_lock(work_dir: str | Path) -> FolderLock:
    """The exclusive lock of a work folder: one compression run in it at a time (see
    :class:`custom_modules.locks.FolderLock`; not yet acquired)."""
    return FolderLock(work_dir, "compress run", "wait for it to end or stop it, or run with another output_dir")


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _short(value: Any) -> str:
    """``value`` for a one-line message: strings bare, anything longer than 40 characters cut (checksums to 12)."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 40 else text[:12] + "..."


def claim_work_folder(work_dir: str | Path, fingerprint: Mapping[str, Any]) -> None:
    """Make ``work_dir`` the work folder of the run described by ``fingerprint`` (JSON-serialisable: the
    settings and input checksums that decide the result), before any work. A folder without resumable work
    (:data:`RESUME_FILES`) is claimed: ``fingerprint.json`` is (re)written. A folder with work is resumed only
    under the same fingerprint. Call it while holding the folder's :func:`work_folder_lock`.

    Raises:
        RuntimeError: the folder holds work of a run with another fingerprint (the message names each
            differing key, old and new value), or of a run that recorded none.
    """
    work_dir = Path(work_dir)
    fingerprint = json.loads(json.dumps(dict(fingerprint)))
    path = work_dir / FINGERPRINT_FILE
    has_work = any((work_dir / name).exists() for name in RESUME_FILES)
    if has_work:
        try:
            recorded = json.loads(path.read_text())
        except FileNotFoundError:
            raise RuntimeError(
                f"{work_dir} holds the work of a compress run that recorded no {FINGERPRINT_FILE} (an older "
                f"raagr2-slim), so its settings cannot be checked: delete {work_dir} to start fresh"
            ) from None
        except ValueError as e:
            raise RuntimeError(f"{path} is unreadable ({e}): delete {work_dir} to start fresh") from None
        if recorded != fingerprint:
            old, new = _flatten(recorded), _flatten(fingerprint)
            keys = [k for k in sorted(set(old) | set(new)) if old.get(k, "<unset>") != new.get(k, "<unset>")]
            shown = "; ".join(f"{k} was {_short(old.get(k))}, now {_short(new.get(k))}" for k in keys[:6])
            more = f"; and {len(keys) - 6} more (see {path})" if len(keys) > 6 else ""
            raise RuntimeError(
                f"{work_dir} holds the work of a compress run with other settings or inputs ({shown}{more}): "
                f"to start fresh delete {work_dir}, or run with another output_dir; to resume it, run with its "
                "settings"
            )
        return
    if path.is_file():
        logger.info(f"{work_dir} holds no finished step; recording this run's fingerprint")
    write_json(path, fingerprint)


@dataclass
class LoopCallbacks:
    """What the loop needs from the world around it.

    Attributes:
        scoring_batches: ``count -> [batch, ...]``, training batches ``{"image": (B, C, H, W), "label":
            (B, 3, H, W)}`` on the network's device, for data-driven criteria.
        finetune: ``(epochs, hooks) -> None``; trains the network in place for ``epochs`` (nothing for 0), with
            its optimizer pointed at the current parameters, calling ``hooks`` (:class:`.hooks.TrainingHooks`).
        evaluate: ``(which, stage) -> Evaluation`` with ``which`` ``"teacher"`` or ``"student"``; ``stage``
            names the evaluation in logs.
    """

    scoring_batches: Callable[[int], list[dict[str, Tensor]]]
    finetune: Callable[[int, TrainingHooks], None]
    evaluate: Callable[[str, str], Evaluation]


@dataclass
class CompressionOutcome:
    """The result of :meth:`CompressionLoop.run`.

    Attributes:
        record: the progress record (``steps``, ``history``, ``teacher_eval``, ``before_finetune``, ``snip``).
        finetuned: evaluation of the fine-tuned network.
        layers: channels kept per conv layer (before the merge of split convs).
        history: Torch-Pruning's pruning history (``None`` for unstructured ``snip``).
        measurements: ``flop_counter``, ``complexity``, ``final_onnx_check`` and ``latency_ms`` (when enabled).
    """

    record: dict[str, Any]
    finetuned: Evaluation
    layers: list[dict[str, Any]]
    history: list[Any] | None
    measurements: dict[str, Any] = field(default_factory=dict)


class CompressionLoop:
    """Prune ``network`` in place under ``pruning`` and ``finetune`` settings (see the module docstring).

    Args:
        network: the network to compress (unpruned, same architecture as ``teacher``).
        teacher: the frozen teacher (its weights are copied into ``network`` unless the criterion scores at init).
        task_loss: ``(logits, label) -> scalar``, used to score (``taylor``, ``gradient_x_input``, ``snip*``).
        pruning: :class:`.settings.PruningSettings`.
        finetune: :class:`.settings.FineTuneSettings`.
        callbacks: :class:`LoopCallbacks`.
        store: resume store; ``None``: no resume.
        final_onnx_exporter: exporter of the final parity check (``"dynamo"``: the graph that ships; ``None``:
            no final check). Runs only with ``pruning.onnx_check``.
        measure_latency: time teacher and pruned network on one example slice.
        latency_table: the per-layer latency table file of the latency-aware search (``rl_cost: latency``); reused
            when it was measured for this network, backend and CPU (default: ``latency_table.json`` in the work
            folder).
    """

    def __init__(
        self,
        network: nn.Module,
        teacher: nn.Module,
        task_loss: Callable[[Tensor, Tensor], Tensor],
        pruning: PruningSettings,
        finetune: FineTuneSettings,
        callbacks: LoopCallbacks,
        store: ProgressStore | None = None,
        final_onnx_exporter: str | None = "dynamo",
        measure_latency: bool = True,
        latency_table: str | Path | None = None,
    ) -> None:
        self.network = network
        self.teacher = teacher
        self.task_loss = task_loss
        self.pruning = pruning
        self.finetune_settings = finetune
        self.callbacks = callbacks
        self.store = store
        self.final_onnx_exporter = final_onnx_exporter
        self.measure_latency = measure_latency
        self.criterion = pruning.criterion
        work_dir = store.work_dir if store is not None else None
        self.latency_table = (
            Path(latency_table)
            if latency_table is not None
            else (Path(work_dir) / "latency_table.json" if work_dir is not None else None)
        )
        self.search_record = Path(work_dir) / SEARCH_RECORD if work_dir is not None else None
        self._teacher_batches: list[dict[str, Tensor]] | None = None

    # ------------------------------------------------------------------------------------------------------
    def run(self) -> CompressionOutcome:
        """Compress; returns the outcome with ``network`` pruned, fine-tuned and in its deployed form."""
        device = network_device(self.network)
        if not self.criterion.from_init:
            self.network.load_state_dict(self.teacher.state_dict())
        loaded = self.store.load(device) if self.store is not None else None
        record = loaded[0] if loaded else (self.store.new() if self.store else {"done": 0, "steps": [], "history": []})
        if "teacher_eval" not in record:
            record["teacher_eval"] = self.callbacks.evaluate("teacher", "teacher")
        searched = self.criterion.structured and self.pruning.resolved_allocation == "rl"
        group_ratios = self._searched_allocation(record) if searched else None
        hand_made = self.pruning.resolved_allocation if self.criterion.structured and not searched else "uniform"
        pruner = StructuredPruner(
            self.network,
            self.pruning.example_shape,
            allocation=hand_made,
            max_layer_ratio=self.pruning.max_layer_ratio,
            round_to=self.pruning.round_to,
            onnx_check=self.pruning.onnx_check,
            group_ratios=group_ratios,
            final_ratio=self._final_ratio() if searched else None,
        )
        masks: dict[str, Tensor] = {}
        if loaded and record["done"]:
            pruner.replay(record["history"])
            self.network.load_state_dict(loaded[1])
            masks = {k: v.to(device) for k, v in loaded[2].items()}
            logger.info(f"resuming {self.store.name} after step {record['done']} from {self.store.work_dir}")
        if self.criterion.structured:
            self._prune_structured(pruner, record)
        else:
            self._prune_snip(pruner, record, masks)
        finetuned = self.callbacks.evaluate("student", "after fine-tuning")
        outcome = CompressionOutcome(
            record=record,
            finetuned=finetuned,
            layers=pruner.layer_channels(),
            history=list(pruner.history) if self.criterion.structured else None,
        )
        merge_split_convs(self.network)  # the deployed form: one grouped conv is faster than its split slots
        outcome.measurements = self._measure(pruner)
        return outcome

    def _final_ratio(self) -> float:
        p = self.pruning
        return make_schedule(p.schedule, p.ratio, p.iterative_steps)[-1].target_ratio

    def _teacher_scoring_batches(self) -> list[dict[str, Tensor]]:
        """The training batches the teacher's channels are ranked on, drawn once and shared by the allocation
        search, the equal-MACs match and the first pruning step: the channels a search priced are the ones pruned,
        and a run's first draw is the same in every arm of a study (same seed)."""
        if self._teacher_batches is None:
            needed = self.criterion.needs_batches
            self._teacher_batches = self.callbacks.scoring_batches(self.pruning.scoring_batches) if needed else []
        return self._teacher_batches

    def _search_cost(self) -> MacsCost | LatencyCost:
        p = self.pruning
        if p.rl_cost == "macs":
            return MacsCost()
        if self.latency_table is None:
            raise ValueError("rl_cost latency needs a latency table file (latency_table) or a work folder")
        table = LatencyTable.load_or_measure(self.latency_table, self.teacher, p.example_shape, p.latency_backend)
        return LatencyCost(table)

    def _searched_allocation(self, record: dict[str, Any]) -> dict[str, float]:
        """The learned per-group ratios (``allocation: rl``): searched once at the cost of the ``rl_target``
        allocation (uniform or global) at the schedule's final ratio, recorded (``allocation_search``) and reused when
        the run resumes."""
        if "allocation_search" in record:
            return dict(record["allocation_search"]["chosen"]["ratios"])
        p = self.pruning
        factory = importance_factory(self.criterion, self._teacher_scoring_batches(), self.task_loss)
        reward_batches = [b["image"] for b in self.callbacks.scoring_batches(p.rl_batches)]
        if not reward_batches:
            raise ValueError("the training data gave no batch to score the allocation search with")
        options = {"example_shape": p.example_shape, "round_to": p.round_to}
        cost = self._search_cost()
        final = self._final_ratio()
        if p.rl_target == "uniform":
            target = uniform_cost(self.teacher, final, cost, **options)
        else:
            target = global_cost(self.teacher, final, factory, cost, p.max_layer_ratio, **options)
        logger.info(
            f"allocation search: {p.rl_samples} samples at the {p.rl_target} allocation's cost at ratio {final:.3f} "
            f"({target:.4g} {cost.unit})"
        )
        settings = SearchSettings(samples=p.rl_samples, max_ratio=p.max_layer_ratio, seed=p.rl_seed)
        search = AllocationSearch(
            self.teacher, reward_batches, target, settings, factory, self.search_record, cost, **options
        )
        result = search.run()
        result["target"] = {"allocation": p.rl_target, "ratio": final, "cost": target, "unit": cost.unit}
        record["allocation_search"] = result
        self._save(record)
        return dict(result["chosen"]["ratios"])

    def _matched_global_ratio(self, record: dict[str, Any]) -> float:
        """``equal_macs``: the global allocation's ratio at which the teacher, pruned in one step, has the MACs of the
        uniform allocation at ``ratio``; found once, recorded (``matched_global``) and reused when the run resumes."""
        if "matched_global" not in record:
            p = self.pruning
            factory = importance_factory(self.criterion, self._teacher_scoring_batches(), self.task_loss)
            options = {"example_shape": p.example_shape, "round_to": p.round_to}
            target = uniform_cost(self.teacher, p.ratio, MacsCost(), **options)
            match = global_ratio_at_cost(self.teacher, target, factory, max_layer_ratio=p.max_layer_ratio, **options)
            logger.info(
                f"equal MACs: the global allocation at ratio {match['ratio']:.4f} has {match['cost']:.4g} MACs, the "
                f"uniform allocation at {p.ratio} {target:.4g}"
            )
            record["matched_global"] = {**match, "uniform_ratio": p.ratio, "unit": "MACs"}
        return float(record["matched_global"]["ratio"])

    def _save(self, record: Mapping[str, Any], masks: Mapping[str, Tensor] | None = None) -> None:
        if self.store is not None:
            self.store.save(record, self.network, masks)

    def _finetune(self, epochs: int, hooks: TrainingHooks | None = None) -> None:
        if epochs > 0:
            self.callbacks.finetune(int(epochs), TrainingHooks() if hooks is None else hooks)

    # ------------------------------------------------------------------------------------------------------
    def _prune_structured(self, pruner: StructuredPruner, record: dict[str, Any]) -> None:
        p, criterion = self.pruning, self.criterion
        ratio = self._matched_global_ratio(record) if p.equal_macs else p.ratio
        steps = make_schedule(p.schedule, ratio, p.iterative_steps)
        importance_class = pruner_class(criterion)
        for i, step in enumerate(steps):
            if i < record["done"]:
                continue
            last = i == len(steps) - 1
            if criterion.sparse_training:
                regularizer = SlimmingRegularizer(
                    lambda: pruner.make_pruner(make_importance(criterion, self.network), pruner_class=importance_class),
                    self.network,
                    reg=p.slimming_reg,
                )
                self._finetune(self.finetune_settings.resolved_sparse_epochs, regularizer.hooks())
            batches = []
            if criterion.needs_batches:
                if i == 0 and not (criterion.from_init or criterion.sparse_training):
                    batches = self._teacher_scoring_batches()  # the network is still the teacher
                else:
                    batches = self.callbacks.scoring_batches(1 if criterion.from_init else p.scoring_batches)
                if not batches:
                    raise ValueError("the training data gave no batch to score the network with")
            importance = make_importance(criterion, self.network, batches, self.task_loss)
            with scoring_mode(self.network):
                step_record = pruner.step(importance, step, pruner_class=importance_class)
            self.network.zero_grad(set_to_none=True)
            record["steps"].append(step_record)
            record["history"] = pruner.history
            # from-init methods prune every step at initialisation and train once at the end (as SNIP does)
            if last:
                record["before_finetune"] = self.callbacks.evaluate("student", "pruned, before fine-tuning")
            if last or not criterion.from_init:
                self._finetune(self.finetune_settings.epochs)
            record["done"] = i + 1
            self._save(record)

    def _prune_snip(
        self, pruner: StructuredPruner, record: dict[str, Any], masks: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Unstructured SNIP at initialisation: masks from one batch (``oneshot``), FORCE-style re-scoring
        (``iterative``) or one layer group at a time (``levelwise``); then training with masks enforced."""
        p = self.pruning
        if record["done"] == 0:
            batches = self.callbacks.scoring_batches(1)
            if not batches:
                raise ValueError("the training data gave no batch to score the network with")
            batch = batches[0]
            head = [pruner.network.get_submodule(n) for n in pruner.never_prune]
            allocation = p.resolved_allocation
            with scoring_mode(self.network, batch_stats=True):
                if p.schedule == "oneshot":
                    masks = snip_masks(
                        snip_saliency(self.network, batch, self.task_loss, exclude=head), p.ratio, allocation
                    )
                elif p.schedule == "iterative":
                    masks = iterative_snip_masks(
                        self.network,
                        batch,
                        self.task_loss,
                        p.ratio,
                        p.iterative_steps,
                        exclude=head,
                        allocation=allocation,
                    )
                else:
                    masks = {}
                    for group in LAYER_GROUPS.values():
                        outside = head + [m for n, m in self.network.named_children() if n not in group]
                        apply_masks(self.network, masks)
                        saliency = snip_saliency(self.network, batch, self.task_loss, exclude=outside)
                        masks.update(snip_masks(saliency, p.ratio, allocation))
            apply_masks(self.network, masks)
            masked = sum(int((~m).sum()) for m in masks.values())
            record["snip"] = {
                "sparsity": p.ratio,
                "masked_weights": masked,
                "scored_weights": sum(m.numel() for m in masks.values()),
                "zeros_before_finetune": count_masked_zeros(self.network, masks),
            }
            record["steps"] = [
                {
                    "step": 1,
                    "target_ratio": p.ratio,
                    "layers": "all",
                    "params": count_parameters(self.network),
                    "masked_weights": masked,
                }
            ]
            record["before_finetune"] = self.callbacks.evaluate("student", "masked at initialisation, before training")
            record["done"] = 1
            self._save(record, masks)
        if record["done"] == 1:
            self._finetune(self.finetune_settings.epochs, MaskEnforcer(self.network, masks).hooks())
            record["snip"]["zeros_after_finetune"] = count_masked_zeros(self.network, masks)
            record["done"] = 2
            self._save(record, masks)
        return masks

    # ------------------------------------------------------------------------------------------------------
    def _measure(self, pruner: StructuredPruner) -> dict[str, Any]:
        """Complexity of teacher and deployed pruned network, the final ONNX check, latency (same process)."""
        device = network_device(self.network)
        final = {
            "params": count_parameters(self.network),
            "flops": count_flops(self.network, self.pruning.example_shape, device=device),
        }
        nonzero = {
            name: sum(int(torch.count_nonzero(p)) for p in net.parameters())
            for name, net in (("teacher", self.teacher), ("pruned", self.network))
        }
        out: dict[str, Any] = {
            "flop_counter": f"{FLOP_COUNTER} (FLOPs = 2 x MACs)",
            "complexity": {
                "teacher": {
                    "params": pruner.teacher_params,
                    "nonzero_params": nonzero["teacher"],
                    "flops": pruner.teacher_flops,
                },
                "pruned": {"params": final["params"], "nonzero_params": nonzero["pruned"], "flops": final["flops"]},
            },
        }
        if self.pruning.onnx_check and self.final_onnx_exporter:
            check_shape = (1, self.pruning.in_channels, 64, 64)
            try:
                diff = onnx_parity(self.network.to("cpu"), check_shape, exporter=self.final_onnx_exporter)
            except Exception as e:
                raise PruningCheckError(f"the final (deployed) pruned network failed its ONNX check: {e}") from e
            finally:
                self.network.to(device)
            out["final_onnx_check"] = {
                "exporter": self.final_onnx_exporter,
                "input_shape": list(check_shape),
                "max_abs_diff": diff,
            }
        if self.measure_latency:
            shape = self.pruning.example_shape
            out["latency_ms"] = {
                "teacher": slice_latency_ms(self.teacher, shape, device=device),
                "pruned": slice_latency_ms(self.network, shape, device=device),
                "threads": torch.get_num_threads(),
                "device": str(device),
            }
        if self.criterion.structured and self.pruning.resolved_allocation == "rl" and self.pruning.rl_cost == "latency":
            out["latency_check"] = self._latency_check()
        return out

    def _latency_check(self) -> dict[str, Any]:
        """The searched network's measured latency on the table's backend against the target allocation's, both
        in their deployed form, measured now in this process, interleaved over 3 rounds (ratios round by round)."""
        p = self.pruning
        shape = p.example_shape
        if p.rl_target != "uniform":
            return {"skipped": f"the latency check compares with the uniform allocation, the target is {p.rl_target}"}
        uniform = uniform_pruned(self.teacher, self._final_ratio(), shape)
        times = compare_networks_ms({"target": uniform, "searched": self.network}, shape, p.latency_backend)
        ratios = [s / t for s, t in zip(times["searched"], times["target"])]
        table = LatencyTable(json.loads(self.latency_table.read_text())) if self.latency_table.is_file() else None
        return {
            "backend": p.latency_backend,
            "input_shape": list(shape),
            "rounds_ms": times,
            "target_ms_measured": statistics.median(times["target"]),
            "searched_ms_measured": statistics.median(times["searched"]),
            "searched_ms_predicted": table.predict_ms(self.network) if table is not None else None,
            "target_ms_predicted": table.predict_ms(uniform) if table is not None else None,
            "searched_vs_target": statistics.median(ratios),
            "within_10_percent": abs(statistics.median(ratios) - 1) <= 0.10,
        }
