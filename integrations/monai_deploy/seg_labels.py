"""The SEG label mapping: the bundle's BraTS label map (0, 1, 2, 4) as the consecutive segment numbers (0, 1, 2, 3)
that MONAI Deploy's ``DICOMSegmentationWriterOperator`` writes, and the segment descriptions that name them.

The labels and their names come from the bundle's ``metadata.json``
(``network_data_format.post_processed_outputs.pred.channel_def``: NCR/NET 1, ED 2, ET 4); segment ``n`` is the
``n``-th label value in ascending order; the codes of each name come from ``segments.json`` beside this file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from monai.deploy.core import Fragment, Image, Operator, OperatorSpec
from monai.deploy.operators.dicom_seg_writer_operator import SegmentDescription
from pydicom.sr.coding import Code

__all__ = ["SEGMENT_CODES", "BraTSLabelsToSegmentsOperator", "bundle_labels", "segment_descriptions"]

#: the DICOM SEG codes of each label name
SEGMENT_CODES = Path(__file__).with_name("segments.json")


def bundle_labels(bundle: str | Path) -> dict[int, str]:
    """``{label value: name}`` of the map the bundle writes, background left out, in ascending value order."""
    meta = json.loads((Path(bundle) / "configs" / "metadata.json").read_text())
    channel_def = meta["network_data_format"]["post_processed_outputs"]["pred"]["channel_def"]
    return {int(v): name for v, name in sorted(channel_def.items(), key=lambda kv: int(kv[0])) if int(v) != 0}


def segment_descriptions(bundle: str | Path, codes_file: str | Path = SEGMENT_CODES) -> list[SegmentDescription]:
    """One ``SegmentDescription`` per label of the bundle (segment numbers 1, 2, ... in label order).

    Raises:
        KeyError: a label name of the bundle has no entry in ``codes_file``.
    """
    meta = json.loads((Path(bundle) / "configs" / "metadata.json").read_text())
    codes = json.loads(Path(codes_file).read_text())
    descriptions = []
    for name in bundle_labels(bundle).values():
        if name not in codes:
            raise KeyError(f"{codes_file}: no segment codes for the bundle's label '{name}'")
        descriptions.append(
            SegmentDescription(
                segment_label=name,
                segmented_property_category=Code(*codes[name]["category"]),
                segmented_property_type=Code(*codes[name]["type"]),
                algorithm_name=str(meta.get("name", Path(bundle).name)),
                algorithm_version=str(meta.get("version", "")),
            )
        )
    return descriptions


class BraTSLabelsToSegmentsOperator(Operator):
    """``seg_image`` (BraTS label values) in, ``seg_image`` (segment numbers) out; other values are an error.

    Args:
        fragment: the application.
        labels: ``{label value: name}`` as :func:`bundle_labels` gives.
    """

    def __init__(self, fragment: Fragment, *args, labels: dict[int, str], **kwargs) -> None:
        self.lookup = np.zeros(max(labels) + 1, dtype=np.uint8)
        for number, value in enumerate(sorted(labels), start=1):
            self.lookup[value] = number
        self.labels = labels
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("seg_image")
        spec.output("seg_image")

    def compute(self, op_input, op_output, context) -> None:
        image = op_input.receive("seg_image")
        op_output.emit(Image(self.to_segments(image.asnumpy()), metadata=image.metadata()), "seg_image")

    def to_segments(self, label_map: np.ndarray) -> np.ndarray:
        """The label map with each label value replaced by its segment number (0 stays 0)."""
        values = np.unique(label_map)
        unknown = [int(v) for v in values if v != 0 and int(v) not in self.labels]
        if unknown:
            raise ValueError(f"the bundle's label map holds {unknown}, not one of its labels {sorted(self.labels)}")
        return self.lookup[label_map.astype(np.int64)]
