"""Layer-by-layer representation similarity of two networks: debiased linear CKA in minibatch form.

Following Nguyen, Raghu & Kornblith (2021), "Do Wide and Deep Networks Learn the Same Things?" (ICLR): for each
minibatch of ``n`` inputs the activations of a layer, flattened to ``X`` (n, features), give the linear Gram matrix
``K = X X^T`` (n, n). HSIC is estimated with the unbiased estimator of Song et al. (2012), ``HSIC_1``::

    K~, L~ = K, L with zeroed diagonals
    HSIC_1(K, L) = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3))

and the three estimates are summed over minibatches before forming
``CKA = sum HSIC_1(K, L) / sqrt(sum HSIC_1(K, K) * sum HSIC_1(L, L))``. The estimator needs ``n >= 4`` inputs per
minibatch (use ``drop_last=True`` in a DataLoader). Being unbiased, CKA of unrelated representations is close to 0
(and may be slightly negative), not inflated by the feature dimension as the biased estimator is. All arithmetic
is float64.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

__all__ = ["MinibatchCKA", "cka_matrix", "default_layers", "gram_linear", "hsic_unbiased", "layer_activations"]

#: feature columns cast to float64 at a time when forming a Gram matrix, which bounds the float64 copy to
#: about ``n * _GRAM_CHUNK`` values however large the layer
_GRAM_CHUNK = 1 << 16


def gram_linear(x: torch.Tensor) -> torch.Tensor:
    """Linear Gram matrix ``X X^T`` (n, n), float64, of activations ``x`` (n, ...) flattened to (n, features)."""
    flat = x.detach().reshape(x.shape[0], -1)
    gram = torch.zeros(flat.shape[0], flat.shape[0], dtype=torch.float64, device=flat.device)
    for start in range(0, flat.shape[1], _GRAM_CHUNK):
        block = flat[:, start : start + _GRAM_CHUNK].to(torch.float64)
        gram += block @ block.T
    return gram


def _check_batch_size(n: int) -> None:
    if n < 4:
        raise ValueError(f"debiased (unbiased HSIC) CKA needs a minibatch of at least 4 inputs, got batch size {n}")


def hsic_unbiased(gram_x: torch.Tensor, gram_y: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC estimator ``HSIC_1`` (Song et al. 2012) of two (n, n) Gram matrices, n >= 4; a 0-d float64."""
    n = gram_x.shape[0]
    if gram_x.shape != (n, n) or gram_y.shape != (n, n):
        raise ValueError(f"Gram matrices must both be (n, n), got {tuple(gram_x.shape)} and {tuple(gram_y.shape)}")
    _check_batch_size(n)
    k = gram_x.to(torch.float64).clone()
    l_ = gram_y.to(torch.float64).clone()
    k.fill_diagonal_(0.0)
    l_.fill_diagonal_(0.0)
    trace_kl = (k * l_.T).sum()
    sums = k.sum() * l_.sum() / ((n - 1) * (n - 2))
    cross = 2.0 / (n - 2) * (k.sum(dim=0) @ l_.sum(dim=1))
    return (trace_kl + sums - cross) / (n * (n - 3))


class MinibatchCKA:
    """Accumulates debiased linear CKA between every layer of a row model and every layer of a column model.

    Call :meth:`update` once per minibatch with both models' activations on the same inputs, then :meth:`compute`.

    Args:
        n_rows: number of row-model layers (the rows of the CKA matrix).
        n_cols: number of column-model layers (the columns).
    """

    def __init__(self, n_rows: int, n_cols: int) -> None:
        if n_rows < 1 or n_cols < 1:
            raise ValueError(f"need at least one layer on each side, got n_rows={n_rows}, n_cols={n_cols}")
        self.n_rows = n_rows
        self.n_cols = n_cols
        self.reset()

    def reset(self) -> None:
        """Forget every accumulated minibatch."""
        self.hsic_xy = torch.zeros(self.n_rows, self.n_cols, dtype=torch.float64)
        self.hsic_xx = torch.zeros(self.n_rows, dtype=torch.float64)
        self.hsic_yy = torch.zeros(self.n_cols, dtype=torch.float64)
        self.n_batches = 0

    def update(self, rows: Sequence[torch.Tensor], cols: Sequence[torch.Tensor]) -> None:
        """Add one minibatch: ``rows`` are the row model's ``n_rows`` activations, ``cols`` the column model's
        ``n_cols``, each (n, ...) for the same ``n >= 4`` inputs (flattened to (n, -1))."""
        if len(rows) != self.n_rows or len(cols) != self.n_cols:
            raise ValueError(
                f"expected {self.n_rows} row and {self.n_cols} column activations, got {len(rows)} and {len(cols)}"
            )
        sizes = {int(a.shape[0]) for a in (*rows, *cols)}
        if len(sizes) != 1:
            raise ValueError(f"all activations of a minibatch must have the same batch size, got sizes {sorted(sizes)}")
        _check_batch_size(sizes.pop())
        grams_x = [gram_linear(a) for a in rows]
        grams_y = [gram_linear(a) for a in cols]
        for i, gx in enumerate(grams_x):
            self.hsic_xx[i] += hsic_unbiased(gx, gx).cpu()
            for j, gy in enumerate(grams_y):
                self.hsic_xy[i, j] += hsic_unbiased(gx, gy).cpu()
        for j, gy in enumerate(grams_y):
            self.hsic_yy[j] += hsic_unbiased(gy, gy).cpu()
        self.n_batches += 1

    def compute(self) -> torch.Tensor:
        """The (n_rows, n_cols) float64 CKA matrix over all minibatches so far; NaN where a layer's accumulated
        self-HSIC is not positive (e.g. a constant, dead layer)."""
        if self.n_batches == 0:
            raise RuntimeError("MinibatchCKA.compute() called before any update()")
        denominator = torch.sqrt(torch.outer(self.hsic_xx, self.hsic_yy))
        cka = self.hsic_xy / denominator
        return torch.where(denominator > 0, cka, torch.full_like(cka, float("nan")))


def _first_tensor(output: object) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((item for item in output if isinstance(item, torch.Tensor)), None)
    return None


def layer_activations(model: nn.Module, layer_names: Sequence[str], inputs: torch.Tensor) -> list[torch.Tensor]:
    """Outputs of the named submodules of ``model`` for one forward pass on ``inputs``, in ``layer_names`` order.

    Runs ``model(inputs)`` in eval mode under ``torch.no_grad()`` (each module's train/eval mode is restored
    afterwards) with forward hooks that are always removed. A module returning a tuple or list contributes its
    first tensor. Each layer must run exactly once per forward pass.

    Args:
        model: the network.
        layer_names: names from ``model.named_modules()`` (``""`` is the model itself).
        inputs: (n, C, ...) input batch, already on the model's device.

    Returns:
        One detached tensor (n, ...) per name.
    """
    modules = dict(model.named_modules())
    missing = [name for name in layer_names if name not in modules]
    if missing:
        raise ValueError(f"layer(s) {missing} not found in {type(model).__name__}.named_modules()")
    captured: dict[str, list[torch.Tensor | None]] = {name: [] for name in layer_names}

    def make_hook(name: str):
        def hook(module: nn.Module, args: object, output: object) -> None:
            tensor = _first_tensor(output)
            captured[name].append(None if tensor is None else tensor.detach())

        return hook

    modes = {module: module.training for module in model.modules()}
    handles = []
    try:
        for name in dict.fromkeys(layer_names):
            handles.append(modules[name].register_forward_hook(make_hook(name)))
        model.eval()
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    outputs = []
    for name in layer_names:
        calls = captured[name]
        if len(calls) != 1:
            raise ValueError(f"layer {name!r} ran {len(calls)} times in one forward pass; need exactly once")
        if calls[0] is None:
            raise ValueError(f"layer {name!r} returned no tensor")
        outputs.append(calls[0])
    return outputs


def cka_matrix(
    row_model: nn.Module,
    col_model: nn.Module,
    row_layers: Sequence[str],
    col_layers: Sequence[str],
    batches: Iterable[torch.Tensor],
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Debiased minibatch linear CKA (len(row_layers), len(col_layers)), float64 on the CPU, between two models.

    Args:
        row_model, col_model: the two networks (e.g. teacher and pruned student), already on ``device``.
        row_layers, col_layers: layer names of each (see :func:`default_layers`).
        batches: input batches (n, C, ...) with n >= 4 each, the same inputs fed to both models.
        device: where each batch is moved before the forward passes; ``None`` leaves it where it is.
    """
    cka = MinibatchCKA(len(row_layers), len(col_layers))
    for batch in batches:
        if device is not None:
            batch = batch.to(device)
        _check_batch_size(int(batch.shape[0]))
        cka.update(layer_activations(row_model, row_layers, batch), layer_activations(col_model, col_layers, batch))
    return cka.compute()


def default_layers(
    model: nn.Module, kinds: tuple[type[nn.Module], ...] = (nn.Conv2d,), max_layers: int | None = None
) -> list[str]:
    """Names of the submodules of ``model`` that are instances of ``kinds``, in ``named_modules()`` order.

    Args:
        model: the network.
        kinds: module classes to keep.
        max_layers: if given (>= 2) and smaller than the number found, keep that many spread evenly over the
            list, always including the first and the last.
    """
    names = [name for name, module in model.named_modules() if isinstance(module, kinds)]
    if max_layers is None or max_layers >= len(names):
        return names
    if max_layers < 2:
        raise ValueError(f"max_layers must be >= 2 (first and last layer are always kept), got {max_layers}")
    last, steps = len(names) - 1, max_layers - 1
    # nearest integer to i * last / steps; consecutive picks are >= 1 apart since steps < last, so all distinct
    return [names[(2 * i * last + steps) // (2 * steps)] for i in range(max_layers)]
