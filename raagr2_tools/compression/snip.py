"""Unstructured SNIP (Lee, Ajanthan & Torr, ICLR 2019) as the paper defines it (``docs/compression.md``).

Connection sensitivity at initialisation, on one batch: ``s_j = |w_j dL/dw_j| / sum_k |w_k dL/dw_k|`` over
the conv weights (no BN, no biases, no excluded modules such as the head); keep the top ``(1 - sparsity)``
globally across layers; train the masked network from scratch with the mask fixed (:class:`MaskEnforcer`).
:func:`iterative_snip_masks` is the progressive variant (FORCE, de Jorge et al., ICLR 2021).

Masks are bool tensors keyed by parameter name (``net.named_parameters()``), so they survive optimizer
resets and checkpoints. Unstructured masks do not shrink the dense network (no size or latency gain).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from .criteria import LossFn, batch_tensors, network_device, scoring_mode
from .hooks import TrainingHooks

__all__ = [
    "ALLOCATIONS",
    "scored_weights",
    "snip_saliency",
    "snip_masks",
    "iterative_snip_masks",
    "apply_masks",
    "count_masked_zeros",
    "MaskEnforcer",
]

ALLOCATIONS = ("global", "uniform")


def scored_weights(net: nn.Module, exclude: Sequence[nn.Module] = ()) -> dict[str, nn.Parameter]:
    """The weights SNIP scores, by parameter name: every ``nn.Conv2d`` weight (depthwise included) outside the
    modules of ``exclude`` (and their submodules). BN, biases and functional kernels are not scored."""
    excluded = {id(m) for e in exclude for m in e.modules()}
    weights: dict[str, nn.Parameter] = {}
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d) and id(module) not in excluded:
            weights[f"{name}.weight" if name else "weight"] = module.weight
    return weights


def _masked_gradients(
    net: nn.Module,
    batch: Mapping[str, Tensor],
    loss_fn: LossFn,
    weights: Mapping[str, nn.Parameter],
    masks: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """``dL/d(c * w)`` of every weight in ``weights`` on ``batch``, with ``masks`` (c) applied temporarily.

    Batch BN statistics (the net is at initialisation), no dropout; ``.grad``, weights and buffers untouched.
    """
    image, label = batch_tensors(batch, network_device(net))
    names = list(weights)
    with _temporarily_masked(net, masks or {}), scoring_mode(net, batch_stats=True), torch.enable_grad():
        loss = loss_fn(net(image), label)
        grads = torch.autograd.grad(loss, [weights[n] for n in names], allow_unused=True)
    return {n: torch.zeros_like(weights[n]) if g is None else g.detach() for n, g in zip(names, grads)}


@contextlib.contextmanager
def _temporarily_masked(net: nn.Module, masks: Mapping[str, Tensor]) -> Iterator[None]:
    params = dict(net.named_parameters())
    saved = {name: params[name].detach().clone() for name in masks}
    apply_masks(net, masks)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)


def snip_saliency(
    net: nn.Module, batch: Mapping[str, Tensor], loss_fn: LossFn, exclude: Sequence[nn.Module] = ()
) -> dict[str, Tensor]:
    """Connection sensitivity ``|w * dL/dw|`` of every scored conv weight (:func:`scored_weights`) on one batch.

    Returns, per parameter name, a tensor of the weight's shape (unnormalised; :func:`snip_masks` normalises).
    """
    weights = scored_weights(net, exclude)
    grads = _masked_gradients(net, batch, loss_fn, weights)
    return {name: (w.detach() * grads[name]).abs() for name, w in weights.items()}


def _keep_count(numel: int, sparsity: float) -> int:
    return int(round((1.0 - sparsity) * numel))


def _top_mask(scores: Tensor, keep: int) -> Tensor:
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if keep > 0:
        mask[torch.topk(scores.flatten(), keep, sorted=False).indices] = True
    return mask.view(scores.shape)


def snip_masks(saliency: Mapping[str, Tensor], sparsity: float, allocation: str = "global") -> dict[str, Tensor]:
    """Bool masks keeping the top ``(1 - sparsity)`` weights by normalised saliency ``s / sum(s)``.

    ``"global"`` (the paper): exactly ``round((1 - sparsity) * n)`` of all ``n`` scored weights, ranked across
    layers. ``"uniform"``: ``round((1 - sparsity) * n_l)`` per layer, at least one. Ties are broken arbitrarily.

    Raises:
        ValueError: ``sparsity`` outside ``[0, 1)`` or an unknown ``allocation``.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}.")
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}.")
    if not saliency:
        return {}
    names = list(saliency)
    total = sum(float(saliency[n].sum()) for n in names)
    normalised = {n: saliency[n].float() / total if total > 0 else saliency[n].float() for n in names}
    if allocation == "uniform":
        return {n: _top_mask(s, max(1, _keep_count(s.numel(), sparsity))) for n, s in normalised.items()}
    flat = torch.cat([normalised[n].flatten() for n in names])
    mask = _top_mask(flat, _keep_count(flat.numel(), sparsity))
    masks, offset = {}, 0
    for n in names:
        size = normalised[n].numel()
        masks[n] = mask[offset : offset + size].view(normalised[n].shape)
        offset += size
    return masks


def iterative_snip_masks(
    net: nn.Module,
    batch: Mapping[str, Tensor],
    loss_fn: LossFn,
    sparsity: float,
    steps: int,
    exclude: Sequence[nn.Module] = (),
    allocation: str = "global",
) -> dict[str, Tensor]:
    """Progressive SNIP at initialisation: FORCE (de Jorge et al., ICLR 2021, "Progressive Skeletonization").

    Over ``steps`` rounds the kept fraction falls geometrically, ``(1 - sparsity) ** (t / steps)``; round ``t``
    re-scores the network masked by round ``t - 1`` with ``|w * dL/d(c * w)|`` (pruned weights can come back,
    as in FORCE) and keeps the top fraction. ``steps=1`` is :func:`snip_saliency` + :func:`snip_masks`.
    The network's weights are restored after every round (it is left unchanged).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    weights = scored_weights(net, exclude)
    masks: dict[str, Tensor] | None = None
    for t in range(1, steps + 1):
        density = (1.0 - sparsity) ** (t / steps)
        grads = _masked_gradients(net, batch, loss_fn, weights, masks)
        saliency = {name: (w.detach() * grads[name]).abs() for name, w in weights.items()}
        masks = snip_masks(saliency, 1.0 - density if t < steps else sparsity, allocation)
    return masks or {}


def apply_masks(net: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """``w *= mask`` in place (no grad) for every masked parameter of ``net``.

    Raises:
        KeyError: a mask names no parameter of ``net``.
        ValueError: a mask's shape differs from its parameter's (e.g. after structured pruning).
    """
    params = dict(net.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            if name not in params:
                raise KeyError(f"mask for unknown parameter {name!r}.")
            param = params[name]
            if mask.shape != param.shape:
                raise ValueError(f"mask of {name} has shape {tuple(mask.shape)}, parameter {tuple(param.shape)}.")
            param.mul_(mask.to(device=param.device, dtype=param.dtype))


def count_masked_zeros(net: nn.Module, masks: Mapping[str, Tensor]) -> int:
    """How many weights under the masks (mask False) are exactly 0."""
    params = dict(net.named_parameters())
    count = 0
    for name, mask in masks.items():
        param = params[name].detach()
        count += int(((~mask.to(param.device)) & (param == 0)).sum())
    return count


class MaskEnforcer:
    """Keep SNIP masks fixed during training, as training hooks: the masks are applied at the start of training
    and after every optimizer step (:meth:`hooks`).

    Args:
        network: the trained network.
        masks: bool masks by parameter name (:func:`snip_masks`).
    """

    def __init__(self, network: nn.Module, masks: Mapping[str, Tensor]) -> None:
        self.network = network
        self.masks = dict(masks)

    def hooks(self) -> TrainingHooks:
        return TrainingHooks(on_start=[self], after_step=[self])

    def __call__(self) -> None:
        apply_masks(self.network, self.masks)
