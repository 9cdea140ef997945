"""Dictionary transforms and callables used by the bundle configs."""

from .case_id import CaseIdToMetad, case_output_name
from .label_map import RegionsToBraTSLabelsd, regions_to_brats_labels

__all__ = ["CaseIdToMetad", "RegionsToBraTSLabelsd", "case_output_name", "regions_to_brats_labels"]
