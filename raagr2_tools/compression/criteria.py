"""Pruning criteria of the compression toolkit as torch-pruning importances (``docs/compression.md``).

Every structured criterion is a :class:`Criterion` record (paper, allocation, what scoring needs) plus a
``tp.importance.Importance`` built by :func:`make_importance`:

===================  ========================================================================================
``magnitude_l1``     L1 norm of the layer's own filters (Li et al., ICLR 2017).
``magnitude_l2``     the same with the L2 norm.
``slimming``         ``|gamma|`` of the BN after each conv, after L1-sparse training (Liu et al., ICCV 2017);
                     the sparse training is :class:`SlimmingRegularizer`, the pruner ``tp.pruner.BNScalePruner``.
``depgraph``         group L2 norm over all coupled layers, mean-normalised (Fang et al., CVPR 2023).
``taylor``           ``(sum_filter w dL/dw)^2`` per filter and minibatch, averaged over the scoring minibatches
                     (Molchanov et al., CVPR 2019, eq. 8 with the mean over minibatches): :func:`taylor_scores`.
``gradient_x_input`` ``sum |a dS/da|`` of each conv output map ``a``: gradient x input relevance, ranked per
                     layer (:func:`gradient_x_input_relevance`). It is the LRP-0 identity of Yeom et al. (Pattern
                     Recognition 2021) only for bias-free ReLU networks; with BN, biases and attention gates it
                     is not an LRP rule, so it is not called ``lrp``.
``snip``             unstructured connection sensitivity (Lee et al., ICLR 2019): see :mod:`.snip`.
``snip_structured``  connection sensitivity summed per filter, one batch at initialisation.
===================  ========================================================================================

Batches are dicts with ``"image"`` ``[B, 4, H, W]`` float and ``"label"`` ``[B, 3, H, W]`` float 0/1 (the
TC/WT/ET region channels); the network returns logits ``[B, 3, H, W]``; ``loss_fn(logits, label)`` is a scalar.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import Tensor, nn

from .hooks import TrainingHooks

__all__ = [
    "METHODS",
    "Criterion",
    "get_criterion",
    "make_importance",
    "importance_factory",
    "pruner_class",
    "LayerScoreImportance",
    "conv_relevance_maps",
    "gradient_x_input_relevance",
    "taylor_scores",
    "RENAMED_METHODS",
    "SlimmingRegularizer",
    "scoring_mode",
    "network_device",
    "batch_tensors",
    "accumulate_gradients",
    "default_loss",
]

METHODS = (
    "magnitude_l1",
    "magnitude_l2",
    "slimming",
    "depgraph",
    "taylor",
    "gradient_x_input",
    "snip",
    "snip_structured",
)
#: names no longer accepted, with why
RENAMED_METHODS: dict[str, str] = {
    "lrp": "gradient_x_input (it computes gradient x input relevance ranked per layer, not an LRP rule)",
}

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Criterion:
    """A pruning criterion and how it is applied.

    Attributes:
        name: one of :data:`METHODS`.
        reference: the paper the criterion follows.
        structured: False only for ``"snip"`` (unstructured masks, :mod:`.snip`).
        from_init: scored on the freshly initialised network (``snip``, ``snip_structured``).
        needs_batches: scoring needs data batches (``taylor``, ``gradient_x_input``, ``snip_structured``).
        sparse_training: L1 on BN gamma during training before pruning (``slimming``).
        default_allocation: ``"uniform"`` (one ratio per layer) or ``"global"`` (ranking across layers).
    """

    name: str
    reference: str
    structured: bool = True
    from_init: bool = False
    needs_batches: bool = False
    sparse_training: bool = False
    default_allocation: str = "uniform"


_LI = "Li et al., ICLR 2017 (Pruning Filters for Efficient ConvNets)"
_SNIP = "Lee, Ajanthan & Torr, ICLR 2019 (SNIP: Single-shot Network Pruning based on Connection Sensitivity)"

_CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in (
        Criterion("magnitude_l1", _LI),
        Criterion("magnitude_l2", _LI + ", L2-norm variant"),
        Criterion(
            "slimming",
            "Liu et al., ICCV 2017 (Learning Efficient Convolutional Networks through Network Slimming)",
            sparse_training=True,
            default_allocation="global",
        ),
        Criterion("depgraph", "Fang et al., CVPR 2023 (DepGraph: Towards Any Structural Pruning)"),
        Criterion(
            "taylor",
            "Molchanov et al., CVPR 2019 (Importance Estimation for Neural Network Pruning)",
            needs_batches=True,
        ),
        Criterion(
            "gradient_x_input",
            "gradient x input relevance, ranked per layer; the LRP-0 identity of Yeom et al., Pattern Recognition "
            "115:107899, 2021 (Pruning by Explaining) only for bias-free ReLU networks",
            needs_batches=True,
        ),
        Criterion("snip", _SNIP, structured=False, from_init=True, default_allocation="global"),
        Criterion(
            "snip_structured",
            _SNIP + ", aggregated per filter",
            from_init=True,
            needs_batches=True,
            default_allocation="global",
        ),
    )
}


def get_criterion(name: str) -> Criterion:
    """The :class:`Criterion` called ``name``.

    Raises:
        ValueError: ``name`` is not one of :data:`METHODS`.
    """
    if name in RENAMED_METHODS:
        raise ValueError(f"pruning criterion {name!r} was renamed {RENAMED_METHODS[name]}.")
    if name not in _CRITERIA:
        raise ValueError(f"unknown pruning criterion {name!r}; expected one of {', '.join(METHODS)}.")
    return _CRITERIA[name]


def pruner_class(criterion: Criterion) -> type:
    """``tp.pruner.BNScalePruner`` for slimming (its ``regularize`` is the L1 on gamma), else
    ``tp.pruner.BasePruner``."""
    return tp.pruner.BNScalePruner if criterion.name == "slimming" else tp.pruner.BasePruner


# --------------------------------------------------------------------------------------------------------------
# scoring helpers


@contextlib.contextmanager
def scoring_mode(net: nn.Module, batch_stats: bool = False) -> Iterator[nn.Module]:
    """Run scoring forwards without side effects: ``net`` in eval mode (no dropout), restored afterwards.

    With ``batch_stats`` the BatchNorm layers use the statistics of the batch (train mode), as at
    initialisation, where the running statistics carry no information; their running buffers are restored
    on exit, so the network is left exactly as it was.
    """
    was_training = {m: m.training for m in net.modules()}
    buffers = {name: b.detach().clone() for name, b in net.named_buffers()} if batch_stats else {}
    net.eval()
    if batch_stats:
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
    try:
        yield net
    finally:
        with torch.no_grad():
            for name, b in net.named_buffers():
                if name in buffers and buffers[name].shape == b.shape:
                    b.copy_(buffers[name])
        for m, flag in was_training.items():
            m.train(flag)


def network_device(net: nn.Module) -> torch.device:
    """The device of ``net``'s first parameter (CPU for a network without parameters)."""
    param = next(net.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def batch_tensors(batch: Mapping[str, Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
    """``(image, label)`` of a batch dict as float tensors on ``device``."""
    return batch["image"].to(device).float(), batch["label"].to(device).float()


def default_loss() -> LossFn:
    """The training loss of the bundles, :class:`custom_modules.losses.WeightedBCEDiceLoss` on logits."""
    from custom_modules.losses import WeightedBCEDiceLoss

    return WeightedBCEDiceLoss(sigmoid=True)


def accumulate_gradients(
    net: nn.Module, batches: Sequence[Mapping[str, Tensor]], loss_fn: LossFn, batch_stats: bool = False
) -> float:
    """Zero ``net``'s gradients, then accumulate ``.grad`` of the mean loss over ``batches``; returns that mean.

    See :func:`scoring_mode` for ``batch_stats``. The gradients stay in ``.grad`` for the pruner.
    """
    if not batches:
        raise ValueError("at least one batch is needed to compute gradients.")
    device = network_device(net)
    net.zero_grad(set_to_none=True)
    total = 0.0
    with scoring_mode(net, batch_stats=batch_stats), torch.enable_grad():
        for batch in batches:
            image, label = batch_tensors(batch, device)
            loss = loss_fn(net(image), label) / len(batches)
            loss.backward()
            total += float(loss.detach())
    return total


# --------------------------------------------------------------------------------------------------------------
# data-driven scores per conv filter


def conv_relevance_maps(net: nn.Module, image: Tensor, label: Tensor) -> dict[nn.Module, list[Tensor]]:
    """Signed gradient x input relevance of every ``nn.Conv2d`` output map, one ``[B, C_out, H, W]`` per call.

    The relevance at the logits is ``R_out = logits * label`` (pre-sigmoid logits masked to the ground
    truth; S = sum(R_out)); that of a conv output ``a`` is ``R_a = a * dS/da`` (the gradient x input identity of
    LRP-0). This is exact LRP-0 (and conserves ``sum(R_a) = S``) for bias-free ReLU networks; through conv
    biases, BatchNorm shifts and the sigmoid attention gates it is an approximation. A module called several
    times (recurrent blocks) gets one map per call. ``net`` is run as it is (its mode is the caller's choice).
    """
    outputs: list[tuple[nn.Module, Tensor]] = []

    def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        outputs.append((module, output))

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.enable_grad():
            image = image.detach().clone().requires_grad_(True)  # a graph exists even with frozen parameters
            logits = net(image)
            score = (logits * label).sum()
            grads = torch.autograd.grad(score, [t for _, t in outputs], allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    maps: dict[nn.Module, list[Tensor]] = {}
    for (module, output), grad in zip(outputs, grads):
        relevance = torch.zeros_like(output) if grad is None else output.detach() * grad
        maps.setdefault(module, []).append(relevance.detach())
    return maps


def gradient_x_input_relevance(net: nn.Module, batches: Sequence[Mapping[str, Tensor]]) -> dict[nn.Module, Tensor]:
    """Filter relevance of every ``nn.Conv2d``: ``sum |R_k|`` over batches, samples, pixels and calls, ``[C_out]``.

    The network is scored in eval mode (running BN statistics, no dropout) and left unchanged; see
    :func:`conv_relevance_maps` for the relevance itself.
    """
    if not batches:
        raise ValueError("gradient_x_input needs at least one batch of reference samples.")
    device = network_device(net)
    relevance: dict[nn.Module, Tensor] = {}
    with scoring_mode(net):
        for batch in batches:
            image, label = batch_tensors(batch, device)
            for module, maps in conv_relevance_maps(net, image, label).items():
                score = sum(m.abs().sum(dim=(0, 2, 3)) for m in maps)
                relevance[module] = relevance[module] + score if module in relevance else score
    return relevance


def taylor_scores(net: nn.Module, batches: Sequence[Mapping[str, Tensor]], loss_fn: LossFn) -> dict[nn.Module, Tensor]:
    """Molchanov et al. (CVPR 2019) filter importance of every ``nn.Conv2d``, ``[C_out]``.

    For each minibatch the loss gradient is computed once and each filter scores ``(sum_s g_s w_s)^2`` over
    its weights (and bias); the scores are averaged over the minibatches. The square is taken per minibatch,
    so filters whose first-order terms change sign between minibatches are not scored as unimportant (which
    averaging the gradients first would do). Scored in eval mode (running BN statistics); gradients are left
    zeroed and the network unchanged.
    """
    if not batches:
        raise ValueError("taylor needs at least one batch to score the network.")
    device = network_device(net)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    scores: dict[nn.Module, Tensor] = {}
    with scoring_mode(net), torch.enable_grad():
        for batch in batches:
            net.zero_grad(set_to_none=True)
            image, label = batch_tensors(batch, device)
            loss_fn(net(image), label).backward()
            for conv in convs:
                if conv.weight.grad is None:
                    continue
                first_order = (conv.weight.grad * conv.weight).flatten(1).sum(1)
                if conv.bias is not None and conv.bias.grad is not None:
                    first_order = first_order + conv.bias.grad * conv.bias
                score = first_order.detach().pow(2) / len(batches)
                scores[conv] = scores[conv] + score if conv in scores else score
    net.zero_grad(set_to_none=True)
    return scores


class LayerScoreImportance(tp.importance.GroupMagnitudeImportance):
    """A torch-pruning importance from per-filter scores of each ``nn.Conv2d`` (:func:`taylor_scores`,
    :func:`gradient_x_input_relevance`).

    A channel of a group scores the mean, over the group's convs whose output channels it is
    (``prune_conv_out_channels`` / ``prune_depthwise_conv_out_channels``), of those filters' scores. No
    normaliser: with the uniform allocation the ranking is within each layer. Convs without a score (the
    shared-depthwise kernel is functional, not a module) are skipped; groups with none return None (not pruned).

    Args:
        scores: per ``nn.Conv2d``, per output channel, ``[C_out]``.
        recompute: when given, called to redo ``scores`` whenever they no longer match a layer's width (after an
            earlier pruning step of an iterative schedule).
    """

    def __init__(
        self,
        scores: Mapping[nn.Module, Tensor],
        recompute: Callable[[], Mapping[nn.Module, Tensor]] | None = None,
    ) -> None:
        super().__init__(p=1, group_reduction="mean", normalizer=None, target_types=[nn.Conv2d])
        self.scores: dict[nn.Module, Tensor] = dict(scores)
        self.recompute = recompute

    def _stale(self, layer: nn.Module) -> bool:
        return layer in self.scores and self.scores[layer].shape[0] != layer.out_channels

    def __call__(self, group: tp.Group) -> Tensor | None:
        out_fns = (tp.prune_conv_out_channels, tp.prune_depthwise_conv_out_channels)
        deps = [(i, dep, idxs) for i, (dep, idxs) in enumerate(group) if dep.pruning_fn in out_fns]
        if any(self._stale(dep.layer) for _, dep, _ in deps):
            if self.recompute is None:
                raise RuntimeError("scores are stale (the network was pruned) and there is no way to recompute them")
            self.scores = dict(self.recompute())
        group_imp: list[Tensor] = []
        group_idxs: list[list[int]] = []
        for i, dep, idxs in deps:
            if dep.layer not in self.scores:
                continue
            group_imp.append(self.scores[dep.layer][list(idxs)])
            group_idxs.append(group[i].root_idxs)
        if not group_imp:
            return None
        return self._normalize(self._reduce(group_imp, group_idxs), self.normalizer)


# --------------------------------------------------------------------------------------------------------------
# importances


def make_importance(
    criterion: Criterion,
    net: nn.Module,
    batches: Sequence[Mapping[str, Tensor]] = (),
    loss_fn: LossFn | None = None,
) -> tp.importance.Importance:
    """The torch-pruning importance of ``criterion`` for ``net`` (scoring ``batches`` where it needs data).

    - ``taylor``: :class:`LayerScoreImportance` on :func:`taylor_scores` over all ``batches`` (eval mode: the
      function that is deployed); recomputed after each pruning step of a multi-step schedule.
    - ``snip_structured``: gradients of the loss on exactly one batch (``batches[0]``) with batch BN statistics
      (the net is freshly initialised), scored ``sum |w * g|`` per filter (``GroupTaylorImportance``,
      ``multivariable=False``, no normaliser); call ``pruner.step()`` before any ``zero_grad``.
    - ``gradient_x_input``: :class:`LayerScoreImportance` on :func:`gradient_x_input_relevance` over all
      ``batches`` (``loss_fn`` unused).

    ``loss_fn`` defaults to the bundles' ``WeightedBCEDiceLoss(sigmoid=True)``.

    Raises:
        ValueError: ``snip`` (unstructured, see :mod:`raagr2_tools.compression.snip`) or no batches for a
            criterion with ``needs_batches``.
    """
    name = criterion.name
    if not criterion.structured:
        raise ValueError(f"{name} is unstructured: use raagr2_tools.compression.snip")
    if criterion.needs_batches and not batches:
        raise ValueError(f"{name} needs data batches to score the network.")
    loss_fn = loss_fn if loss_fn is not None else default_loss()
    if name == "magnitude_l1":
        return tp.importance.GroupMagnitudeImportance(p=1, group_reduction="first", normalizer=None)
    if name == "magnitude_l2":
        return tp.importance.GroupMagnitudeImportance(p=2, group_reduction="first", normalizer=None)
    if name == "depgraph":
        return tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer="mean")
    if name == "slimming":
        return tp.importance.BNScaleImportance(normalizer=None)
    if name == "taylor":
        return LayerScoreImportance(
            taylor_scores(net, batches, loss_fn), recompute=lambda: taylor_scores(net, batches, loss_fn)
        )
    if name == "snip_structured":
        accumulate_gradients(net, batches[:1], loss_fn, batch_stats=True)
        return tp.importance.GroupTaylorImportance(multivariable=False, normalizer=None)
    if name == "gradient_x_input":
        return LayerScoreImportance(
            gradient_x_input_relevance(net, batches), recompute=lambda: gradient_x_input_relevance(net, batches)
        )
    raise ValueError(f"no importance for criterion {name!r}.")  # pragma: no cover - METHODS are all handled


def importance_factory(
    criterion: Criterion,
    batches: Sequence[Mapping[str, Tensor]] = (),
    loss_fn: LossFn | None = None,
) -> Callable[[nn.Module], tp.importance.Importance]:
    """``network -> importance`` of ``criterion`` for many unpruned copies of one network (the sparsity search
    prunes a fresh copy of the teacher for every candidate).

    Data-driven scores (``taylor``, ``gradient_x_input``) are computed once, on the first network given, and kept
    by conv name, so every later copy is ranked by the same scores without another backward pass; the other
    criteria need no data and are made per call.

    Raises:
        ValueError: a criterion the search cannot rank copies with: unstructured ``snip``, and those scored at
            initialisation or after sparse training (``snip_structured``, ``slimming``).
    """
    if not criterion.structured or criterion.from_init or criterion.sparse_training:
        raise ValueError(
            f"method {criterion.name!r} cannot rank the candidates of the learned (rl) allocation: it is scored "
            "at initialisation or after sparse training; use magnitude_l1, magnitude_l2, depgraph, taylor or "
            "gradient_x_input"
        )
    if criterion.name not in ("taylor", "gradient_x_input"):
        return lambda net: make_importance(criterion, net, batches, loss_fn)
    named: dict[str, Tensor] = {}

    def make(net: nn.Module) -> tp.importance.Importance:
        modules = dict(net.named_modules())
        if not named:
            if criterion.name == "taylor":
                scores = taylor_scores(net, batches, loss_fn if loss_fn is not None else default_loss())
            else:
                scores = gradient_x_input_relevance(net, batches)
            names = {m: n for n, m in modules.items()}
            named.update({names[m]: s.detach().clone() for m, s in scores.items()})
        return LayerScoreImportance({modules[n]: s for n, s in named.items() if n in modules})

    return make


# --------------------------------------------------------------------------------------------------------------
# network slimming: sparse training


class SlimmingRegularizer:
    """Network Slimming's L1 penalty on BN gamma during training (Liu et al., ICCV 2017), as training hooks.

    At the start of training (:meth:`build`) the pruner is built by ``pruner_factory`` (the network may have
    changed shape since the last run; the factory runs with :func:`scoring_mode`, so its tracing forward changes
    no BN buffer); after every backward pass, before the optimizer step (:meth:`regularize`), it calls
    ``pruner.regularize(network, reg=reg)``, which adds ``reg * sign(gamma)`` to ``gamma.grad`` of every BN
    outside the pruner's ignored layers. :meth:`hooks` returns both as :class:`.hooks.TrainingHooks`. Build the
    pruner with
    ``group_lasso=False`` (the default): ``group_lasso=True`` crashes on groups without BN in torch-pruning 1.6.1.

    Args:
        pruner_factory: returns the ``tp.pruner.BNScalePruner`` of ``network``.
        network: the trained network.
        reg: lambda, the L1 coefficient (paper: 1e-4 VGG, 1e-5 ResNet; sweep 1e-5..1e-4).
    """

    def __init__(
        self, pruner_factory: Callable[[], tp.pruner.BNScalePruner], network: nn.Module, reg: float = 1e-4
    ) -> None:
        self.pruner_factory = pruner_factory
        self.network = network
        self.reg = float(reg)
        self.pruner: tp.pruner.BNScalePruner | None = None

    def hooks(self) -> TrainingHooks:
        """Build at the start of training, regularise after every backward pass."""
        return TrainingHooks(on_start=[self.build], after_backward=[self.regularize])

    def build(self) -> None:
        with scoring_mode(self.network):
            self.pruner = self.pruner_factory()

    def regularize(self) -> None:
        if self.pruner is None:
            raise RuntimeError("SlimmingRegularizer: no pruner yet (start training with its hooks, or call build()).")
        self.pruner.regularize(self.network, reg=self.reg)
