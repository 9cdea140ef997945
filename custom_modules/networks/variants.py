"""The bundle variants of RAAGR2-Net by name: the ``variant`` key of the configs -> ``RAAGR2Net(sharing=...)``."""

from __future__ import annotations

__all__ = ["VARIANTS", "variant_sharing"]

#: ``variant`` key -> ``RAAGR2Net(sharing=...)``
VARIANTS: dict[str, str] = {"baseline": "none", "shared_depthwise": "depthwise"}


def variant_sharing(variant: str) -> str:
    """``RAAGR2Net`` ``sharing`` of a ``variant`` (``baseline`` or ``shared_depthwise``).

    Raises:
        ValueError: ``variant`` is not a key of :data:`VARIANTS`.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {tuple(VARIANTS)}, got {variant!r}")
    return VARIANTS[variant]
