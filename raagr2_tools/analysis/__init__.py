"""Analysis for the compression study: paired per-case statistics against the teacher and layer-wise CKA.

- :mod:`.statistics` (numpy/scipy): bootstrap CI of the mean paired difference, Wilcoxon signed-rank test, and
  their combination pairing per-case values by case id;
- :mod:`.cka` (torch): debiased linear CKA in minibatch form between the layers of two networks.
"""

from .cka import MinibatchCKA, cka_matrix, default_layers, gram_linear, hsic_unbiased, layer_activations
from .statistics import BOOTSTRAP_METHOD, compare_to_reference, paired_bootstrap_ci, paired_wilcoxon

__all__ = [
    "BOOTSTRAP_METHOD",
    "MinibatchCKA",
    "cka_matrix",
    "compare_to_reference",
    "default_layers",
    "gram_linear",
    "hsic_unbiased",
    "layer_activations",
    "paired_bootstrap_ci",
    "paired_wilcoxon",
]
