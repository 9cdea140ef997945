"""Make PyPI's torchvision importable beside the CPU torch wheel, which MONAI Label needs (``torchvision.utils``).

PyPI's torchvision wheels for torch 2.13 are CUDA builds: their C++ extension does not load against the CPU torch
wheel, and ``import torchvision`` then fails in ``torchvision/_meta_registrations.py`` with ``RuntimeError:
operator torchvision::nms does not exist``, because that file registers fake kernels for ``nms`` and ``qnms``
without checking that the extension defined them (pytorch/vision#9085). :func:`ensure_importable` defines the two
operator schemas (no kernel: calling ``torchvision.ops.nms`` still fails, clearly) when, and only when, the
extension cannot load, so that the import succeeds; MONAI Label and this app use only torchvision's image utilities.
"""

from __future__ import annotations

import importlib
import logging
import sys

logger = logging.getLogger(__name__)

#: the schemas ``torchvision/_meta_registrations.py`` registers fake kernels for unconditionally
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # kept alive: dropping the Library object would remove the definitions


def ensure_importable() -> None:
    """Import torchvision; if its extension is missing, define the schemas it needs and import it again."""
    global _library
    try:
        importlib.import_module("torchvision")
        return
    except RuntimeError as e:
        if "torchvision::nms does not exist" not in str(e):
            raise
    import torch

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _library.define(schema)
    importlib.import_module("torchvision")
    logger.warning(
        "torchvision's C++ extension does not load with this torch (a CUDA build of torchvision beside CPU torch); "
        "its image utilities work, its detection ops (nms, roi_align) do not"
    )
