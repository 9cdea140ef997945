"""Dictionary transforms and callables used by the bundle configs."""

from .brain import BrainMaskd
from .case_id import CaseIdToMetad, case_output_name
from .intensity import RegionsFromLogitsd, ZScoreNonzerod
from .label_map import regions_to_brats_labels
from .load_case import CheckCased, LoadCased, LoadImageCased
from .postprocess import (
    DeliveredLabelMapd,
    DeliveredRegionsd,
    LabelMapPostprocessing,
    delivered_regions,
    postprocess_label_map,
)
from .save import AtomicNibabelWriter, PredictionTargetd, prediction_path

__all__ = [
    "AtomicNibabelWriter",
    "BrainMaskd",
    "CaseIdToMetad",
    "CheckCased",
    "DeliveredLabelMapd",
    "DeliveredRegionsd",
    "LabelMapPostprocessing",
    "LoadCased",
    "LoadImageCased",
    "PredictionTargetd",
    "RegionsFromLogitsd",
    "case_output_name",
    "delivered_regions",
    "postprocess_label_map",
    "prediction_path",
    "regions_to_brats_labels",
    "ZScoreNonzerod",
]
