"""A learned layer-wise sparsity: a REINFORCE search over per-group pruning ratios at a fixed cost (RL-Pruner's idea,
Wang & Kindratenko 2024, on Torch-Pruning groups so that reused modules and coupled channels move together).

One action per Torch-Pruning group (:meth:`StructuredPruner.prunable_groups`: the shared-depthwise kernel used at
four dilations and the recurrent convs called three times are inside one group each). The policy holds one logit
``mu_g`` per group; a sample draws ``z_g = mu_g + sigma * eps_g`` (``eps ~ N(0, 1)``) and the group's *preference*
``p_g = sigmoid(z_g)``. Preferences set the shape of the allocation, the cost sets its size: the ratios are
``r_g = min(max_ratio, s * p_g)`` with the scale ``s`` found by bisection so that the pruned network's cost (MACs
of one forward pass at ``example_shape``, counted on the pruned network) is the target within ``cost_tolerance``.
Every sample therefore costs the same, and the reward is accuracy alone: the agreement of the pruned, not
fine-tuned, student with the teacher on a few validation batches (mean over the region channels of the Dice
between their thresholded masks; channels pruned with the same importance the compression step uses).

Update: REINFORCE with a baseline, ``mu += lr * (R - b) * eps / sigma`` after each sample, ``b`` an exponential
moving average of the rewards (``baseline_decay``), the first reward its start. The chosen allocation is the
sample with the highest reward. Each sample's draw comes from ``numpy.random.default_rng([seed, index])``, and
pruning and scoring are deterministic on the CPU, so a run is reproducible for a seed and a killed run resumes from
its record (written atomically after every sample) with the same result.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from custom_modules.files import write_json

from .engine import StructuredPruner
from .engine import logger as engine_logger
from .schedule import PruningStep

__all__ = ["SEARCH_METHOD", "AllocationSearch", "SearchSettings", "UnreachableTargetError", "mask_agreement"]

logger = logging.getLogger(__name__)

SEARCH_METHOD = "REINFORCE with an exponential-moving-average baseline over per-group logits (RL-Pruner's policy idea)"


class UnreachableTargetError(ValueError):
    """No allocation within the ratio limits reaches the target cost."""


@dataclass(frozen=True)
class SearchSettings:
    """The search's budget and policy.

    Attributes:
        samples: allocations drawn and scored.
        sigma: standard deviation of the policy's logit noise.
        learning_rate: step of the REINFORCE update on the logits.
        baseline_decay: weight of the old baseline in its moving average.
        max_ratio: no group loses more than this fraction of its teacher channels.
        cost_tolerance: relative distance to the target cost that the scale bisection accepts.
        seed: seed of the draws.
    """

    samples: int = 16
    sigma: float = 0.5
    learning_rate: float = 0.5
    baseline_decay: float = 0.8
    max_ratio: float = 0.9
    cost_tolerance: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if not 0.0 < self.max_ratio < 1.0:
            raise ValueError(f"max_ratio must lie in (0, 1), got {self.max_ratio}")
        if self.sigma <= 0 or self.learning_rate <= 0 or not 0.0 <= self.baseline_decay < 1.0:
            raise ValueError("sigma and learning_rate must be > 0, baseline_decay in [0, 1)")


def mask_agreement(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Mean over channels of the Dice between ``logits >= 0`` masks of ``(B, C, H, W)`` outputs (1 where both empty)."""
    s, t = student >= 0, teacher >= 0
    dims = (0, 2, 3)
    both = (s & t).sum(dims).double()
    total = (s.sum(dims) + t.sum(dims)).double()
    dice = torch.where(total > 0, 2 * both / total.clamp(min=1), torch.ones_like(total))
    return float(dice.mean())


class AllocationSearch:
    """Search per-group ratios for ``network`` (the teacher, not modified) at the cost of ``target_cost`` MACs.

    Args:
        network: the teacher network (a copy is pruned for each evaluation).
        batches: validation inputs ``(B, C, H, W)`` the reward is scored on.
        target_cost: MACs of one forward pass at ``example_shape`` that every sampled allocation is scaled to.
        settings: the search's budget and policy.
        importance: makes the channel importance used inside each group (default: group L2 magnitude).
        record_path: the search record (JSON), written after every sample and read to resume.
        pruner_options: passed to each :class:`StructuredPruner` (``example_shape``, ``never_prune``, ``round_to``).

    Raises:
        UnreachableTargetError: even every group at ``max_ratio`` costs more than the target.
    """

    def __init__(
        self,
        network: nn.Module,
        batches: Sequence[torch.Tensor],
        target_cost: float,
        settings: SearchSettings = SearchSettings(),
        importance: Callable[[], tp.importance.Importance] | None = None,
        record_path: str | Path | None = None,
        **pruner_options: Any,
    ) -> None:
        self.teacher = network.eval()
        self.batches = list(batches)
        self.settings = settings
        self.importance = importance or (lambda: tp.importance.GroupMagnitudeImportance(p=2))
        self.record_path = Path(record_path) if record_path is not None else None
        self.pruner_options = {"onnx_check": False, **pruner_options}
        probe = StructuredPruner(copy.deepcopy(network), **self.pruner_options)
        self.groups = [g["root"] for g in probe.prunable_groups()]
        self.teacher_cost = float(probe.teacher_flops) / 2  # FLOPs count a multiply-add as two
        self.target_cost = float(target_cost)
        with torch.no_grad():
            self.teacher_outputs = [self.teacher(b) for b in self.batches]
        smallest = self.cost(dict.fromkeys(self.groups, settings.max_ratio))
        if smallest > self.target_cost * (1 + settings.cost_tolerance):
            raise UnreachableTargetError(
                f"target cost {self.target_cost:.4g} MACs "
                f"({self.target_cost / self.teacher_cost:.1%} of the teacher's) is below the smallest reachable "
                f"with every group at max_ratio {settings.max_ratio}: "
                f"{smallest:.4g} MACs ({smallest / self.teacher_cost:.1%}); raise max_ratio or the target"
            )

    def _prune(self, ratios: dict[str, float]) -> StructuredPruner:
        pruner = StructuredPruner(copy.deepcopy(self.teacher), group_ratios=ratios, **self.pruner_options)
        if any(v > 0 for v in ratios.values()):
            level = engine_logger.level
            engine_logger.setLevel(logging.WARNING)  # one line per candidate would drown the search's progress
            try:
                pruner.step(self.importance(), PruningStep(1, 1.0))
            finally:
                engine_logger.setLevel(level)
        return pruner

    def cost(self, ratios: dict[str, float]) -> float:
        """MACs of the teacher pruned to ``ratios`` (one forward pass at ``example_shape``)."""
        return float(self._prune(ratios).check()["flops"]) / 2

    def _ratios(self, preferences: np.ndarray, scale: float) -> dict[str, float]:
        limit = self.settings.max_ratio
        return {g: float(min(limit, scale * p)) for g, p in zip(self.groups, preferences)}

    def fit_scale(self, preferences: np.ndarray) -> tuple[float, dict[str, float], float]:
        """(scale, ratios, cost) with the cost within ``cost_tolerance`` of the target (bisection on the scale)."""
        low, high = 0.0, self.settings.max_ratio / max(float(preferences.min()), 1e-6)
        at_high = self._ratios(preferences, high)
        best = (high, at_high, self.cost(at_high))
        for _ in range(30):
            mid = 0.5 * (low + high)
            ratios = self._ratios(preferences, mid)
            cost = self.cost(ratios)
            if abs(cost - self.target_cost) <= self.settings.cost_tolerance * self.target_cost:
                return mid, ratios, cost
            if cost > self.target_cost:
                low = mid
            else:
                high, best = mid, (mid, ratios, cost)
        return best  # the closest allocation at or below the target (channel counts are integers)

    def reward(self, ratios: dict[str, float]) -> float:
        """Teacher agreement of the pruned (not fine-tuned) student on the validation batches."""
        student = self._prune(ratios).network.eval()
        with torch.no_grad():
            scores = [mask_agreement(student(b), t) for b, t in zip(self.batches, self.teacher_outputs)]
        return float(np.mean(scores))

    def _signature(self) -> dict[str, Any]:
        return {
            "method": SEARCH_METHOD,
            "settings": asdict(self.settings),
            "groups": self.groups,
            "target_cost_macs": self.target_cost,
            "batches": [list(b.shape) for b in self.batches],
        }

    def _load(self) -> dict[str, Any]:
        fresh = {**self._signature(), "teacher_cost_macs": self.teacher_cost, "samples": []}
        if self.record_path is None or not self.record_path.is_file():
            return fresh
        record = json.loads(self.record_path.read_text())
        if {k: record.get(k) for k in self._signature()} != json.loads(json.dumps(self._signature())):
            logger.warning("%s: written by a search with other settings; starting again", self.record_path)
            return fresh
        logger.info(
            "%s: resuming after %d of %d samples", self.record_path, len(record["samples"]), self.settings.samples
        )
        return record

    def run(self) -> dict[str, Any]:
        """Draw, score and learn from ``settings.samples`` allocations; returns the search record (JSON-ready) with
        ``chosen`` (the best sample: ``ratios`` per group, ``cost_macs``, ``reward``)."""
        s = self.settings
        record = self._load()
        mu = np.zeros(len(self.groups))  # replay the updates of the samples already scored
        baseline = None
        for sample in record["samples"]:
            mu, baseline = self._update(mu, baseline, np.asarray(sample["eps"]), sample["reward"])
        for index in range(len(record["samples"]), s.samples):
            eps = np.random.default_rng([s.seed, index]).standard_normal(len(self.groups))
            preferences = 1.0 / (1.0 + np.exp(-(mu + s.sigma * eps)))
            scale, ratios, cost = self.fit_scale(preferences)
            reward = self.reward(ratios)
            record["samples"].append(
                {
                    "index": index,
                    "eps": eps.tolist(),
                    "scale": scale,
                    "ratios": ratios,
                    "cost_macs": cost,
                    "cost_vs_target": cost / self.target_cost,
                    "reward": reward,
                    "baseline": baseline,
                }
            )
            mu, baseline = self._update(mu, baseline, eps, reward)
            best = max(record["samples"], key=lambda r: r["reward"])
            logger.info(
                "rl search sample %d/%d: reward %.4f (best %.4f), cost %.3f x target",
                index + 1,
                s.samples,
                reward,
                best["reward"],
                cost / self.target_cost,
            )
            record["policy_logits"] = mu.tolist()
            if self.record_path is not None:
                write_json(self.record_path, record)
        best = max(record["samples"], key=lambda r: r["reward"])
        record["chosen"] = {k: best[k] for k in ("index", "ratios", "cost_macs", "reward")}
        record["policy_logits"] = mu.tolist()
        if self.record_path is not None:
            write_json(self.record_path, record)
        return record

    def _update(self, mu: np.ndarray, baseline: float | None, eps: np.ndarray, reward: float):
        s = self.settings
        base = reward if baseline is None else baseline
        mu = mu + s.learning_rate * (reward - base) * eps / s.sigma
        baseline = reward if baseline is None else s.baseline_decay * baseline + (1 - s.baseline_decay) * reward
        return mu, baseline
