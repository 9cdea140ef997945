"""Dictionary transforms and callables used by the bundle configs."""

from .brain import BrainMaskd
from .case_id import CaseIdToMetad, case_output_name
from .label_map import regions_to_brats_labels
from .postprocess import (
    DeliveredLabelMapd,
    DeliveredRegionsd,
    LabelMapPostprocessing,
    delivered_regions,
    postprocess_label_map,
)

__all__ = [
    "BrainMaskd",
    "CaseIdToMetad",
    "DeliveredLabelMapd",
    "DeliveredRegionsd",
    "LabelMapPostprocessing",
    "case_output_name",
    "delivered_regions",
    "postprocess_label_map",
    "regions_to_brats_labels",
]
