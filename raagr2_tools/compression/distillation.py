"""Knowledge distillation from the unpruned teacher into a pruned (or otherwise smaller) student.

:class:`KnowledgeDistillationLoss` is a drop-in ``loss_function`` for an unmodified MONAI
:class:`~monai.engines.SupervisedTrainer`, which calls ``loss_function(pred, label)`` only. The batch the teacher
needs is taken from the student itself by a forward pre-hook, so neither the trainer nor the bundle config
changes (``docs/compression.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["KnowledgeDistillationLoss", "attention_map"]


def _plain(x: Tensor) -> Tensor:
    """``x`` without MONAI metadata (a ``MetaTensor`` becomes a plain tensor; autograd is kept)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else x


def attention_map(features: Tensor) -> Tensor:
    """Spatial attention map of Zagoruyko & Komodakis (ICLR 2017): channel mean of ``F**2``, L2-normalised.

    Args:
        features: feature maps ``[B, C, *spatial]``.

    Returns:
        ``[B, prod(spatial)]``, each row of unit L2 norm (independent of ``C``, so student and teacher may differ
        in width).
    """
    return F.normalize(features.float().pow(2).mean(dim=1).flatten(1), p=2, dim=1)


class KnowledgeDistillationLoss(nn.Module):
    """``(1 - alpha) * task_loss(student_logits, label) + alpha * T^2 * mean BCE(sigmoid(s/T), sigmoid(t/T))
    + feature_weight * attention-transfer loss``.

    - **Soft targets** (Hinton et al., 2015, for sigmoid multi-label maps): binary KD per channel and pixel with
      the teacher's tempered probabilities ``sigmoid(t/T)`` as targets, mean over ``[B, C, *spatial]``, scaled by
      ``T^2`` so that its gradients keep their size across temperatures. Its minimum (zero gradient) is at
      ``s == t``; the minimum *value* is the teacher's mean binary entropy, not 0.
    - **Attention transfer** (Zagoruyko & Komodakis, ICLR 2017): for each of ``feature_layers`` (module names
      from ``named_modules()``, present in both nets), ``mean_b ||A_s - A_t||_2`` with ``A`` from
      :func:`attention_map`; the term is the mean over the layers. Parameter free, so it works when the student
      has fewer channels than the teacher; the spatial sizes must match.

    How it gets the teacher's input: a forward pre-hook on ``student`` stores the batch (and forward hooks store
    the student's ``feature_layers`` outputs) whenever the student runs in training mode; a forward in eval mode
    clears them. :meth:`forward` then runs the frozen teacher (eval mode, ``no_grad``, moved to the batch's
    device) on that batch. The hooks sit on module objects, which keep their identity when Torch-Pruning
    prunes the student in place, so one loss object serves all steps of an iterative schedule. Call
    :meth:`close` to remove the hooks (before pickling or deep-copying the whole student module, whose hooks
    otherwise refer to this loss and its teacher).

    Args:
        task_loss: supervised loss on logits, e.g. ``WeightedBCEDiceLoss(sigmoid=True)``; ``(pred, label) -> scalar``.
        teacher: the unpruned network, returning logits ``[B, C, *spatial]``; frozen here (``requires_grad``
            False, eval mode) and registered as a submodule, so ``loss.to(device)`` moves it.
        student: the network being trained, returning logits of the same shape; not registered here.
        alpha: weight of the soft-target term in ``[0, 1]``; the task loss gets ``1 - alpha``.
        temperature: ``T > 0``.
        feature_weight: weight of the attention-transfer term (``0`` disables it and its hooks).
        feature_layers: module names of the feature maps to match (RAAGR2-Net: bottleneck and decoder outputs).

    Example::

        loss = KnowledgeDistillationLoss(WeightedBCEDiceLoss(sigmoid=True), teacher, student, alpha=0.5)
        trainer = SupervisedTrainer(..., network=student, loss_function=loss, ...)
    """

    def __init__(
        self,
        task_loss: nn.Module,
        teacher: nn.Module,
        student: nn.Module,
        alpha: float = 0.5,
        temperature: float = 2.0,
        feature_weight: float = 0.0,
        feature_layers: Sequence[str] = ("enc5", "dec5", "dec4", "dec3", "dec2"),
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        if feature_weight < 0:
            raise ValueError(f"feature_weight must be >= 0, got {feature_weight}.")
        if teacher is student:
            raise ValueError("teacher and student must be different module objects.")
        self.task_loss = task_loss
        self.teacher = teacher
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.feature_weight = float(feature_weight)
        self.feature_layers = tuple(feature_layers) if feature_weight > 0 else ()
        self.teacher.requires_grad_(False)
        self.teacher.eval()

        self._input: Tensor | None = None
        self._recording = False
        self._running_teacher = False
        self._student_features: dict[str, Tensor] = {}
        self._teacher_features: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = [
            student.register_forward_pre_hook(self._on_student_input, with_kwargs=True)
        ]
        if self.feature_layers:
            student_modules, teacher_modules = dict(student.named_modules()), dict(teacher.named_modules())
            for net, modules in (("student", student_modules), ("teacher", teacher_modules)):
                missing = [n for n in self.feature_layers if n not in modules]
                if missing:
                    raise ValueError(f"feature_layers {missing} not found in the {net}'s named_modules().")
            for name in self.feature_layers:
                self._handles.append(student_modules[name].register_forward_hook(self._feature_hook(name, True)))
                self._handles.append(teacher_modules[name].register_forward_hook(self._feature_hook(name, False)))

    def _on_student_input(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Forward pre-hook on the student: keep the batch in training mode, forget it in eval mode."""
        self._student_features = {}
        self._recording = module.training
        if not module.training:
            self._input = None
            return
        x = args[0] if args else next(iter(kwargs.values()), None)
        self._input = _plain(x).detach() if isinstance(x, Tensor) else None

    def _feature_hook(self, name: str, is_student: bool) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not isinstance(output, Tensor):
                return
            if is_student and self._recording:
                self._student_features[name] = _plain(output)
            elif not is_student and self._running_teacher:
                self._teacher_features[name] = _plain(output)

        return hook

    def _run_teacher(self, pred: Tensor) -> Tensor:
        """Teacher logits on the stored student batch, shape-checked against ``pred``."""
        if self._input is None:
            raise RuntimeError(
                "KnowledgeDistillationLoss: no stored student input. The student must run a forward pass in "
                "training mode (student.train()) on the batch right before the loss is called; eval-mode "
                "forwards are not recorded."
            )
        x = self._input
        param = next(self.teacher.parameters(), None)
        if param is not None and param.device != x.device:
            self.teacher.to(x.device)
        self.teacher.eval()
        self._teacher_features = {}
        self._running_teacher = True
        try:
            with torch.no_grad():
                logits = _plain(self.teacher(x))
        finally:
            self._running_teacher = False
        if logits.shape != pred.shape:
            raise ValueError(
                f"teacher output {tuple(logits.shape)} does not match the student prediction {tuple(pred.shape)}; "
                "the stored input must be the batch that produced pred."
            )
        return logits.float()

    def soft_target_loss(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """``T^2 * mean BCE(sigmoid(s/T), sigmoid(t/T))`` over ``[B, C, *spatial]`` (a scalar)."""
        t = self.temperature
        target = torch.sigmoid(teacher_logits.float() / t)
        return t * t * F.binary_cross_entropy_with_logits(student_logits.float() / t, target)

    def attention_transfer_loss(self) -> Tensor:
        """Mean over ``feature_layers`` and samples of ``||A_s - A_t||_2`` for the last recorded forwards."""
        terms = []
        for name in self.feature_layers:
            if name not in self._student_features or name not in self._teacher_features:
                raise RuntimeError(f"KnowledgeDistillationLoss: no recorded feature map for layer {name!r}.")
            fs, ft = self._student_features[name], self._teacher_features[name]
            if fs.shape[0] != ft.shape[0] or fs.shape[2:] != ft.shape[2:]:
                raise ValueError(
                    f"layer {name!r}: student {tuple(fs.shape)} and teacher {tuple(ft.shape)} feature maps must share "
                    "batch and spatial sizes."
                )
            terms.append(torch.linalg.vector_norm(attention_map(fs) - attention_map(ft), ord=2, dim=1).mean())
        return torch.stack(terms).mean()

    def forward(self, pred: Tensor, label: Tensor) -> Tensor:
        """
        Args:
            pred: student logits ``[B, C, *spatial]`` from the student's last training-mode forward.
            label: ground truth for ``task_loss`` (binary masks of the same shape for the losses of this repo).

        Returns:
            scalar loss tensor. With ``alpha == 0`` and ``feature_weight == 0`` this is ``task_loss(pred, label)``
            and the teacher is not run; otherwise a missing training-mode student forward raises ``RuntimeError``.
        """
        loss = (1.0 - self.alpha) * self.task_loss(pred, label)
        if self.alpha == 0.0 and self.feature_weight == 0.0:
            return loss
        teacher_logits = self._run_teacher(pred)
        if self.alpha > 0.0:
            loss = loss + self.alpha * self.soft_target_loss(_plain(pred), teacher_logits)
        if self.feature_weight > 0.0:
            loss = loss + self.feature_weight * self.attention_transfer_loss()
        return loss

    def train(self, mode: bool = True) -> KnowledgeDistillationLoss:
        """Set the training mode of ``task_loss``; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def close(self) -> None:
        """Remove all hooks from student and teacher and drop the stored tensors."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._input = None
        self._recording = False
        self._student_features = {}
        self._teacher_features = {}
