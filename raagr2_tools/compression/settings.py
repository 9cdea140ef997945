"""The settings of a compression run, in three small groups: pruning, fine-tuning, reporting.

``bundles/raagr2_pruned/configs/compress.json`` builds each group from its top-level keys (``method``,
``ratio``, ``epochs``, ...), so users override the same keys as before. :func:`settings_fingerprint` is the part
of them that decides a run's result (the compression step refuses to resume work done under another).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .criteria import Criterion, get_criterion, importance_factory
from .engine import ALLOCATIONS
from .latency_table import BACKENDS
from .schedule import make_schedule

__all__ = [
    "ALLOCATION_CHOICES",
    "SEARCH_COSTS",
    "PruningSettings",
    "FineTuneSettings",
    "ReportSettings",
    "RESULT_NEUTRAL",
    "settings_fingerprint",
]

#: ``allocation`` values: the engine's hand-made ones and the learned one (:mod:`.rl_search`)
ALLOCATION_CHOICES = (*ALLOCATIONS, "rl")
#: what the learned allocation holds fixed: MACs, or latency on ``latency_backend`` predicted by a per-layer table
SEARCH_COSTS = ("macs", "latency")
#: whose cost at ``ratio`` the learned allocation is searched at
SEARCH_TARGETS = ("uniform", "global")

#: settings that only check or time the result, not what it is: a run may resume with them changed
RESULT_NEUTRAL = frozenset({"onnx_check", "measure_latency"})


@dataclass(frozen=True)
class PruningSettings:
    """What is removed and how.

    Attributes:
        method: a criterion of :data:`raagr2_tools.compression.criteria.METHODS`.
        ratio: channel fraction removed from every pruned layer (structured), or weight sparsity (``snip``).
        schedule: ``oneshot``, ``iterative`` or ``levelwise``.
        iterative_steps: steps of the ``iterative`` schedule.
        allocation: ``uniform``, ``global`` or ``rl`` (learned per group at the uniform allocation's cost,
            :mod:`.rl_search`); ``None``: the criterion's default.
        max_layer_ratio: per-layer cap of the global allocation and per-group cap of the learned one.
        round_to: keep channel counts multiples of this (``None``: any count).
        scoring_batches: training batches scored by data-driven criteria (``taylor``, ``gradient_x_input``).
        slimming_reg: L1 coefficient on BN gamma during slimming's sparse training.
        onnx_check: ONNX Runtime parity after every step and of the final network.
        example_size: slice size ``[H, W]`` of the forward check and the FLOP count.
        in_channels: input channels of the network.
        rl_samples: allocations the learned search draws and scores.
        rl_batches: training batches whose teacher agreement is the search's reward.
        rl_cost: ``macs`` or ``latency`` (:data:`SEARCH_COSTS`): the cost every candidate is scaled to.
        rl_seed: seed of the search's draws.
        rl_target: ``uniform`` or ``global`` (:data:`SEARCH_TARGETS`): the allocation whose cost at ``ratio`` the
            search is held at (so it is compared with that allocation at equal cost).
        latency_backend: backend of the latency cost (:data:`.latency_table.BACKENDS`).
        equal_macs: ``global`` only: scale the global ratio so that the pruned teacher has the MACs of the uniform
            allocation at ``ratio`` (found on the teacher before the first step); without it the global allocation
            removes ``ratio`` of all channels, wherever they are.
    """

    method: str
    ratio: float
    schedule: str = "oneshot"
    iterative_steps: int = 3
    allocation: str | None = None
    max_layer_ratio: float = 0.8
    round_to: int | None = None
    scoring_batches: int = 8
    slimming_reg: float = 1e-4
    onnx_check: bool = True
    example_size: Sequence[int] = (192, 192)
    in_channels: int = 4
    rl_samples: int = 16
    rl_batches: int = 4
    rl_cost: str = "macs"
    rl_seed: int = 0
    rl_target: str = "uniform"
    latency_backend: str = "onnxruntime"
    equal_macs: bool = False

    def __post_init__(self) -> None:
        get_criterion(self.method)
        make_schedule(self.schedule, float(self.ratio), int(self.iterative_steps))  # validates schedule and ratio
        if self.allocation is not None and self.allocation not in ALLOCATION_CHOICES:
            raise ValueError(
                f"config key allocation: must be one of {ALLOCATION_CHOICES} or null, got {self.allocation!r}"
            )
        if self.rl_cost not in SEARCH_COSTS:
            raise ValueError(f"config key rl_cost: must be one of {SEARCH_COSTS}, got {self.rl_cost!r}")
        if self.rl_target not in SEARCH_TARGETS:
            raise ValueError(f"config key rl_target: must be one of {SEARCH_TARGETS}, got {self.rl_target!r}")
        if self.latency_backend not in BACKENDS:
            raise ValueError(f"config key latency_backend: must be one of {BACKENDS}, got {self.latency_backend!r}")
        if self.allocation == "rl":
            importance_factory(self.criterion)  # refuses criteria the search cannot rank candidates with
            if self.rl_target == "uniform" and float(self.ratio) > float(self.max_layer_ratio):
                raise ValueError(
                    f"config key max_layer_ratio: {self.max_layer_ratio} caps every group below ratio {self.ratio}, so "
                    "no learned allocation can reach the uniform allocation's cost at that ratio (its target); set "
                    "max_layer_ratio >= ratio"
                )
            if int(self.rl_samples) < 1 or int(self.rl_batches) < 1:
                raise ValueError("config keys rl_samples and rl_batches: must be >= 1")
        if self.equal_macs and self.resolved_allocation != "global":
            raise ValueError(
                f"config key equal_macs: only the global allocation needs it (uniform is the reference cost and rl "
                f"is searched at it), the allocation here is {self.resolved_allocation!r}"
            )
        object.__setattr__(self, "equal_macs", bool(self.equal_macs))
        for key in ("rl_samples", "rl_batches", "rl_seed"):
            object.__setattr__(self, key, int(getattr(self, key)))
        object.__setattr__(self, "ratio", float(self.ratio))
        object.__setattr__(self, "round_to", int(self.round_to) if self.round_to else None)
        object.__setattr__(self, "example_size", tuple(int(s) for s in self.example_size))

    @property
    def criterion(self) -> Criterion:
        return get_criterion(self.method)

    @property
    def resolved_allocation(self) -> str:
        """``allocation``, or the criterion's default when it is ``None``."""
        return self.allocation or self.criterion.default_allocation

    @property
    def example_shape(self) -> tuple[int, ...]:
        """``(1, in_channels, H, W)``: the input of the forward check and the FLOP count."""
        return (1, int(self.in_channels), *self.example_size)


@dataclass(frozen=True)
class FineTuneSettings:
    """How the pruned network is trained after each step.

    Attributes:
        epochs: fine-tuning epochs after each step (0: none).
        sparse_epochs: sparse-training epochs before each slimming step (``None``: ``epochs``).
        distillation: the trainer's loss distils from the teacher (recorded; compress.json builds the loss).
        kd_alpha, kd_temperature, kd_feature_weight: distillation weights (see ``KnowledgeDistillationLoss``).
    """

    epochs: int = 1
    sparse_epochs: int | None = None
    distillation: bool = True
    kd_alpha: float = 0.5
    kd_temperature: float = 2.0
    kd_feature_weight: float = 0.0

    @property
    def resolved_sparse_epochs(self) -> int:
        return int(self.epochs if self.sparse_epochs is None else self.sparse_epochs)

    def record(self) -> dict[str, Any]:
        """The report's ``finetune`` entry."""
        return {
            "epochs_per_step": int(self.epochs),
            "distillation": bool(self.distillation),
            "alpha": float(self.kd_alpha),
            "temperature": float(self.kd_temperature),
            "feature_weight": float(self.kd_feature_weight),
        }


@dataclass(frozen=True)
class ReportSettings:
    """What the compression report measures.

    Attributes:
        eval_split: name of the datalist split the evaluators score (recorded).
        measure_latency: time teacher and pruned network on one example slice (same process).
        dice_metric, hd95_metric: names of the per-case region metrics in the evaluators.
        hd95_definition: the HD95 definition the evaluators use (recorded; see
            :data:`custom_modules.metrics.HD95_DEFINITIONS`).
    """

    eval_split: str = "test"
    measure_latency: bool = True
    dice_metric: str = "report_dice"
    hd95_metric: str = "report_hd95"
    hd95_definition: str = "brats2023"


def settings_fingerprint(
    pruning: PruningSettings, finetune: FineTuneSettings, report: ReportSettings
) -> dict[str, dict[str, Any]]:
    """Every field of the three groups except :data:`RESULT_NEUTRAL`, JSON-ready:
    ``{"pruning": {...}, "finetune": {...}, "report": {...}}``."""
    groups = {"pruning": pruning, "finetune": finetune, "report": report}
    fields = {name: {k: v for k, v in asdict(g).items() if k not in RESULT_NEUTRAL} for name, g in groups.items()}
    return json.loads(json.dumps(fields))
