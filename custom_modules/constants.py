"""Facts every part of raagr2-slim shares, defined once: region channels, their display order, modalities.

- :data:`REGION_CHANNELS`: channel order of the networks' outputs and of the label channels, MONAI's BraTS
  order (``ConvertToMultiChannelBasedOnBratsClassesd``): 0 = tumour core, 1 = whole tumour, 2 = enhancing.
- :data:`REGION_DISPLAY_ORDER`: the order in which tables, figures and reports list the regions (BraTS
  convention, largest region first).
- :data:`MODALITY_ORDER`: input channel order of every datalist and network (T1c, T1, T2, FLAIR).
- :data:`BRATS_LABELS`: the label values of a BraTS label map.
- :data:`LABEL_PAINT_ORDER`: how binary regions become that map (each region paints its value, later ones win).
"""

from __future__ import annotations

__all__ = ["REGION_CHANNELS", "REGION_DISPLAY_ORDER", "MODALITY_ORDER", "BRATS_LABELS", "LABEL_PAINT_ORDER"]

#: output/label channel order: tumour core, whole tumour, enhancing tumour
REGION_CHANNELS: tuple[str, ...] = ("tc", "wt", "et")
#: order of the regions in tables, figures and reports
REGION_DISPLAY_ORDER: tuple[str, ...] = ("wt", "tc", "et")
#: input channel order: post-contrast T1, T1, T2, FLAIR
MODALITY_ORDER: tuple[str, ...] = ("t1c", "t1", "t2", "flair")
#: BraTS label values of a label map (what the bundles write and ``ConvertToMultiChannelBasedOnBratsClassesd``
#: reads: TC = 1|4, WT = 1|2|4, ET = 4)
BRATS_LABELS: dict[int, str] = {
    0: "background",
    1: "NCR/NET: necrotic and non-enhancing tumour core",
    2: "ED: peritumoural edema",
    4: "ET: enhancing tumour",
}
#: regions -> label map: paint WT as 2 (edema), then TC as 1 (NCR/NET), then ET as 4 (ET wins over TC, TC over WT)
LABEL_PAINT_ORDER: tuple[tuple[str, int], ...] = (("wt", 2), ("tc", 1), ("et", 4))
