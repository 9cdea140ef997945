"""A learned layer-wise sparsity: a REINFORCE search over per-group pruning ratios at a fixed cost (RL-Pruner's idea,
Wang & Kindratenko 2024, on Torch-Pruning groups so that reused modules and coupled channels move together).

One action per Torch-Pruning group (:meth:`StructuredPruner.prunable_groups`: the shared-depthwise kernel used at
four dilations and the recurrent convs called three times are inside one group each). The policy holds one logit
``mu_g`` per group; a sample draws ``z_g = mu_g + sigma * eps_g`` (``eps ~ N(0, 1)``) and the group's *preference*
``p_g = sigmoid(z_g)``. Preferences set the shape of the allocation, the cost sets its size: the ratios are
``r_g = min(max_ratio, s * p_g)`` with the scale ``s`` found by bisection so that the pruned network's cost is the
target within ``cost_tolerance``. The cost is :class:`MacsCost` (MACs of one forward pass at ``example_shape``,
counted on the pruned network) or :class:`LatencyCost` (its latency on a CPU backend predicted by a per-layer
table, :mod:`.latency_table`); the target is usually the cost of the uniform allocation at the step's ratio
(:func:`uniform_cost`), so the search and the hand-made allocations are compared at equal cost.
Every sample therefore costs the same, and the reward is accuracy alone: the agreement of the pruned, not
fine-tuned, student with the teacher on a few validation batches (mean over the region channels of the Dice
between their thresholded masks). Inside each group the channels are chosen by the compression step's criterion
(:func:`.criteria.importance_factory`: Taylor scores are computed once on the teacher and reused for every candidate);
the bisection itself prunes by L2 magnitude, since the channel counts, and so the cost, do not depend on which
channels go.

Before the first sample the uniform allocation at the target (every group the same ratio) is scored: it is the
``reference`` the search has to beat and the baseline's start. Update: REINFORCE with a baseline,
``mu += lr * (R - b) * eps / sigma`` after each sample, ``b`` an exponential moving average of the rewards
(``baseline_decay``). The chosen allocation is the sample with the highest reward if it beats the reference, else
the reference itself (``chosen_is_reference``): the search never hands on an allocation that agrees with the teacher
less than the uniform one. Each sample's draw comes from ``numpy.random.default_rng([seed, index])``, and
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

__all__ = [
    "SEARCH_METHOD",
    "AllocationSearch",
    "LatencyCost",
    "MacsCost",
    "SearchSettings",
    "UnreachableTargetError",
    "global_cost",
    "global_ratio_at_cost",
    "mask_agreement",
    "prunable_copy",
    "pruned_copy",
    "uniform_cost",
]

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


class MacsCost:
    """Multiply-accumulates of one forward pass of the pruned network at its pruner's ``example_shape``."""

    unit = "MACs"
    name = "macs"

    def __call__(self, pruner: StructuredPruner) -> float:
        return float(pruner.check()["flops"]) / 2  # the FLOP counter counts a multiply-add as two

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "unit": self.unit}


class LatencyCost:
    """Predicted milliseconds of one forward pass on the table's backend (:class:`.latency_table.LatencyTable`)."""

    unit = "ms"
    name = "latency"

    def __init__(self, table: Any) -> None:
        self.table = table

    def __call__(self, pruner: StructuredPruner) -> float:
        return self.table.predict_ms(pruner.network)

    def flush(self) -> None:
        """Write the widths timed so far to the table's file."""
        self.table.save()

    def describe(self) -> dict[str, Any]:
        r = self.table.record
        return {
            "name": self.name,
            "unit": self.unit,
            "backend": r["backend"],
            "backend_version": r.get("backend_version"),
            "example_shape": r["example_shape"],
            "calibration": r.get("calibration"),
        }


def prunable_copy(network: nn.Module) -> nn.Module:
    """A deep copy of ``network`` whose parameters require gradients (a frozen teacher's do not, and Torch-Pruning
    traces its dependency graph through autograd)."""
    clone = copy.deepcopy(network)
    for parameter in clone.parameters():
        parameter.requires_grad_(True)
    return clone


def _quiet_step(pruner: StructuredPruner, importance: tp.importance.Importance, ratio: float) -> None:
    level = engine_logger.level
    engine_logger.setLevel(logging.WARNING)  # one line per candidate would drown the search's progress
    try:
        pruner.step(importance, PruningStep(1, ratio))
    finally:
        engine_logger.setLevel(level)


def pruned_copy(
    network: nn.Module,
    ratio: float,
    allocation: str = "uniform",
    importance: Callable[[nn.Module], tp.importance.Importance] | None = None,
    max_layer_ratio: float = 0.8,
    **pruner_options: Any,
) -> StructuredPruner:
    """A copy of ``network`` pruned in one step by a hand-made ``allocation`` at ``ratio`` (``uniform``: every group
    loses ``ratio`` of its channels; ``global``: one ranking across layers, none losing more than
    ``max_layer_ratio``), channels ranked by ``importance`` of the copy (default: group L2 magnitude); returns its
    pruner (network in the split form)."""
    options = {"onnx_check": False, **pruner_options}
    pruner = StructuredPruner(prunable_copy(network), allocation=allocation, max_layer_ratio=max_layer_ratio, **options)
    if ratio > 0:
        ranking = importance(pruner.network) if importance is not None else tp.importance.GroupMagnitudeImportance(p=2)
        _quiet_step(pruner, ranking, float(ratio))
    return pruner


def uniform_cost(
    network: nn.Module, ratio: float, cost: Callable[[StructuredPruner], float], **pruner_options
) -> float:
    """The cost of ``network`` with the uniform allocation at ``ratio`` (every group loses ``ratio`` of its
    channels): the target at which the search is compared with the hand-made allocations."""
    return float(cost(pruned_copy(network, ratio, "uniform", **pruner_options)))


def global_cost(
    network: nn.Module,
    ratio: float,
    importance: Callable[[nn.Module], tp.importance.Importance],
    cost: Callable[[StructuredPruner], float] | None = None,
    max_layer_ratio: float = 0.8,
    **pruner_options: Any,
) -> float:
    """The cost of ``network`` pruned in one step by the ``global`` allocation at ``ratio`` (channels ranked by
    ``importance`` across layers, no layer losing more than ``max_layer_ratio``)."""
    cost = cost if cost is not None else MacsCost()
    return float(cost(pruned_copy(network, ratio, "global", importance, max_layer_ratio, **pruner_options)))


def global_ratio_at_cost(
    network: nn.Module,
    target_cost: float,
    importance: Callable[[nn.Module], tp.importance.Importance],
    cost: Callable[[StructuredPruner], float] | None = None,
    max_layer_ratio: float = 0.8,
    tolerance: float = 0.01,
    **pruner_options: Any,
) -> dict[str, Any]:
    """The ratio of the ``global`` allocation at which ``network`` pruned in one step (channels ranked by
    ``importance`` across layers, no layer losing more than ``max_layer_ratio``) costs ``target_cost``: the first of
    the ratios 0.05, 0.10, ..., 0.95 at which the cost is at or below the target, then bisection between it and the
    ratio before (the global ratio may exceed the per-layer cap; Torch-Pruning's global ranking with capped layers is
    not monotone near 1, so the top is not probed first). Returns ``{"ratio", "cost", "target_cost", "evaluations"}``.

    Raises:
        UnreachableTargetError: no ratio of the grid reaches the target (the cap keeps too much).
    """

    evaluations = 0

    def cost_at(ratio: float) -> float:
        nonlocal evaluations
        evaluations += 1
        return global_cost(network, ratio, importance, cost, max_layer_ratio, **pruner_options)

    low, high, at_high, seen = 0.0, None, None, []
    for step in range(1, 20):
        ratio = round(0.05 * step, 2)
        value = cost_at(ratio)
        seen.append(value)
        if abs(value - target_cost) <= tolerance * target_cost:
            return {"ratio": ratio, "cost": value, "target_cost": float(target_cost), "evaluations": evaluations}
        if value < target_cost:
            high, at_high = ratio, value
            break
        low = ratio
    if high is None:
        raise UnreachableTargetError(
            f"the global allocation costs at least {min(seen):.4g} at ratios 0.05 to 0.95 with every layer capped at "
            f"max_layer_ratio {max_layer_ratio}, above the target {target_cost:.4g}; raise max_layer_ratio"
        )
    best = (high, at_high)
    for _ in range(12):
        mid = 0.5 * (low + high)
        value = cost_at(mid)
        if abs(value - target_cost) <= tolerance * target_cost:
            return {"ratio": mid, "cost": value, "target_cost": float(target_cost), "evaluations": evaluations}
        if value > target_cost:
            low = mid
        else:
            high, best = mid, (mid, value)
    return {"ratio": best[0], "cost": best[1], "target_cost": float(target_cost), "evaluations": evaluations}


class AllocationSearch:
    """Search per-group ratios for ``network`` (the teacher, not modified) at the cost ``target_cost``.

    Args:
        network: the teacher network (a copy is pruned for each evaluation).
        batches: validation inputs ``(B, C, H, W)`` the reward is scored on.
        target_cost: the cost, in ``cost``'s unit, that every sampled allocation is scaled to.
        settings: the search's budget and policy.
        importance: ``network -> importance`` ranking channels inside each group of a fresh teacher copy
            (:func:`.criteria.importance_factory`; default: group L2 magnitude).
        record_path: the search record (JSON), written after every sample and read to resume.
        cost: what a pruned network costs (:class:`MacsCost`, the default, or :class:`LatencyCost`).
        progress: called with one line after every sample (default: the module's logger).
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
        importance: Callable[[nn.Module], tp.importance.Importance] | None = None,
        record_path: str | Path | None = None,
        cost: Callable[[StructuredPruner], float] | None = None,
        progress: Callable[[str], None] | None = None,
        **pruner_options: Any,
    ) -> None:
        self.teacher = network.eval()
        self.batches = list(batches)
        self.settings = settings
        self.importance = importance or (lambda net: tp.importance.GroupMagnitudeImportance(p=2))
        self.record_path = Path(record_path) if record_path is not None else None
        self.cost_model = cost if cost is not None else MacsCost()
        self.progress = progress or logger.info
        self.pruner_options = {"onnx_check": False, **pruner_options}
        probe = StructuredPruner(prunable_copy(network), **self.pruner_options)
        self.groups = [g["root"] for g in probe.prunable_groups()]
        self.teacher_cost = float(self.cost_model(probe))
        self.target_cost = float(target_cost)
        with torch.no_grad():
            self.teacher_outputs = [self.teacher(b) for b in self.batches]
        smallest = self._smallest_reachable()
        if smallest > self.target_cost * (1 + settings.cost_tolerance):
            unit = self.unit
            raise UnreachableTargetError(
                f"target cost {self.target_cost:.4g} {unit} "
                f"({self.target_cost / self.teacher_cost:.1%} of the teacher's) is below the smallest reachable "
                f"with every group at max_ratio {settings.max_ratio} or at one ratio up to it: "
                f"{smallest:.4g} {unit} ({smallest / self.teacher_cost:.1%}); raise max_ratio (the bundle key "
                "max_layer_ratio) or the target"
            )

    def _smallest_reachable(self) -> float:
        """The smallest cost probed: every group at ``max_ratio`` (the smallest for MACs), and, when that is above the
        target, every group at the same ratio on a grid of 0.05 steps up to ``max_ratio`` (measured latency is not
        monotone in the widths: a tiny network can get slower when pruned to odd widths)."""
        limit = self.settings.max_ratio
        smallest = self.cost(dict.fromkeys(self.groups, limit))
        ratio = 0.05
        while smallest > self.target_cost * (1 + self.settings.cost_tolerance) and ratio < limit:
            smallest = min(smallest, self.cost(dict.fromkeys(self.groups, ratio)))
            ratio = round(ratio + 0.05, 2)
        return smallest

    @property
    def unit(self) -> str:
        return str(getattr(self.cost_model, "unit", "cost"))

    def _prune(self, ratios: dict[str, float], ranked: bool = False) -> StructuredPruner:
        """A teacher copy pruned to ``ratios``: channels ranked by ``importance`` when ``ranked``, else by L2
        magnitude (same channel counts, so the same cost)."""
        pruner = StructuredPruner(prunable_copy(self.teacher), group_ratios=ratios, **self.pruner_options)
        if any(v > 0 for v in ratios.values()):
            importance = self.importance(pruner.network) if ranked else tp.importance.GroupMagnitudeImportance(p=2)
            _quiet_step(pruner, importance, 1.0)
        return pruner

    def cost(self, ratios: dict[str, float]) -> float:
        """The cost of the teacher pruned to ``ratios``."""
        return float(self.cost_model(self._prune(ratios)))

    def _ratios(self, preferences: np.ndarray, scale: float) -> dict[str, float]:
        limit = self.settings.max_ratio
        return {g: float(min(limit, scale * p)) for g, p in zip(self.groups, preferences)}

    def fit_scale(self, preferences: np.ndarray) -> tuple[float, dict[str, float], float]:
        """(scale, ratios, cost) with the cost within ``cost_tolerance`` of the target (bisection on the scale), else
        the closest at or below it. A cost that is not monotone in the scale (measured latency of odd widths) can
        defeat the bisection; then the scales 0.05, 0.10, ... of the range are tried as well."""
        tolerance = self.settings.cost_tolerance * self.target_cost
        low, high = 0.0, self.settings.max_ratio / max(float(preferences.min()), 1e-6)
        tried: list[tuple[float, dict[str, float], float]] = []

        def attempt(scale: float) -> tuple[float, dict[str, float], float]:
            ratios = self._ratios(preferences, scale)
            tried.append((scale, ratios, self.cost(ratios)))
            return tried[-1]

        attempt(high)
        for _ in range(30):
            mid = 0.5 * (low + high)
            _, _, cost = attempt(mid)
            if abs(cost - self.target_cost) <= tolerance:
                return tried[-1]
            if cost > self.target_cost:
                low = mid
            else:
                high = mid
        if not any(cost <= self.target_cost + tolerance for _, _, cost in tried):
            top = tried[0][0]
            for step in range(1, 20):
                attempt(top * step / 20)
        within = [t for t in tried if t[2] <= self.target_cost + tolerance]
        if within:  # the closest allocation at or below the target (channel counts are integers)
            return max(within, key=lambda t: t[2])
        return min(tried, key=lambda t: t[2])  # nothing reaches the target: the cheapest tried

    def reward(self, ratios: dict[str, float]) -> float:
        """Teacher agreement of the pruned (not fine-tuned) student on the validation batches."""
        student = self._prune(ratios, ranked=True).network.eval()
        with torch.no_grad():
            scores = [mask_agreement(student(b), t) for b, t in zip(self.batches, self.teacher_outputs)]
        return float(np.mean(scores))

    def _signature(self) -> dict[str, Any]:
        describe = getattr(self.cost_model, "describe", None)
        return {
            "method": SEARCH_METHOD,
            "settings": asdict(self.settings),
            "groups": self.groups,
            "cost": describe() if callable(describe) else {"unit": self.unit},
            "target_cost": self.target_cost,
            "batches": [list(b.shape) for b in self.batches],
        }

    def _load(self) -> dict[str, Any]:
        signature = json.loads(json.dumps(self._signature()))
        fresh = {**signature, "teacher_cost": self.teacher_cost, "samples": []}
        if self.record_path is None or not self.record_path.is_file():
            return fresh
        try:
            record = json.loads(self.record_path.read_text())
        except ValueError as e:
            logger.warning("%s: unreadable (%s); starting again", self.record_path, e)
            return fresh
        if {k: record.get(k) for k in signature} != signature:
            logger.warning("%s: written by a search with other settings; starting again", self.record_path)
            return fresh
        self.progress(f"{self.record_path}: resuming after {len(record['samples'])} of {self.settings.samples} samples")
        return record

    def run(self) -> dict[str, Any]:
        """Score the uniform allocation at the target (``reference``), then draw, score and learn from
        ``settings.samples`` allocations; returns the search record (JSON-ready) with ``chosen``: the best sample
        (``ratios`` per group, ``cost``, ``reward``), or the reference (``index`` -1, ``chosen_is_reference``) when
        no sample beat it."""
        s = self.settings
        record = self._load()
        if "reference" not in record:  # the uniform allocation at the target: the starting point to beat
            _, ratios, cost = self.fit_scale(np.full(len(self.groups), 0.5))
            record["reference"] = {
                "allocation": "uniform",
                "ratios": ratios,
                "cost": cost,
                "reward": self.reward(ratios),
            }
            self.progress(f"rl search: the uniform allocation at the target scores {record['reference']['reward']:.4f}")
        mu = np.zeros(len(self.groups))  # replay the updates of the samples already scored
        baseline = float(record["reference"]["reward"])
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
                    "cost": cost,
                    "cost_vs_target": cost / self.target_cost,
                    "reward": reward,
                    "baseline": baseline,
                }
            )
            mu, baseline = self._update(mu, baseline, eps, reward)
            best = max(record["samples"], key=lambda r: r["reward"])
            self.progress(
                f"rl search sample {index + 1}/{s.samples}: reward {reward:.4f} (best {best['reward']:.4f}), "
                f"cost {cost / self.target_cost:.3f} x target"
            )
            record["policy_logits"] = mu.tolist()
            flush = getattr(self.cost_model, "flush", None)
            if callable(flush):
                flush()
            if self.record_path is not None:
                write_json(self.record_path, record)
        best = max(record["samples"], key=lambda r: r["reward"])
        if best["reward"] > record["reference"]["reward"]:
            record["chosen"] = {k: best[k] for k in ("index", "ratios", "cost", "reward")}
        else:  # no sample beat the uniform allocation: keep it
            record["chosen"] = {"index": -1, **{k: record["reference"][k] for k in ("ratios", "cost", "reward")}}
        record["chosen_is_reference"] = record["chosen"]["index"] == -1
        record["policy_logits"] = mu.tolist()
        if self.record_path is not None:
            write_json(self.record_path, record)
        return record

    def _update(self, mu: np.ndarray, baseline: float, eps: np.ndarray, reward: float):
        s = self.settings
        mu = mu + s.learning_rate * (reward - baseline) * eps / s.sigma
        return mu, s.baseline_decay * baseline + (1 - s.baseline_decay) * reward
