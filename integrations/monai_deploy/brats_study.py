"""The multi-series operator: a study's four selected MR series as one 4-channel volume, its input contract checked.

:class:`BraTSStudyToVolumeOperator` is MONAI Deploy's ``DICOMSeriesToVolumeOperator`` (its slice sorting, rescaling
and affine) applied to each series the selector found, in the bundle's channel order (``metadata.json``
``network_data_format.inputs.image.channel_def``: T1c, T1, T2, FLAIR, the selection names of
``series_rules.json``). It emits

- ``image``: an ``Image`` of shape ``(W, H, D, 4)`` (columns, rows, slices, channels: the voxel array of the NIfTI
  the series came from), float32, with the metadata the bundle operator hands to ``EnsureChannelFirstd``
  (``original_channel_dim`` -1, the RAS ``affine``, the series named for the bundle's input checks);
- ``study_selected_series_list``: the study with the first channel's series first, the series the DICOM SEG
  writer references (all four share its grid).

It refuses a study, with a :class:`StudyContractError` that names the series and the problem, when there is not
exactly one study, a channel has no series (the descriptions found are listed), one series fills two channels, the
grids differ, or a series is not in BraTS space: 1 mm isotropic voxels (:data:`SPACING_MM`), axial slices in the
BraTS orientation (:data:`ORIENTATION`: rows along patient left, columns along posterior) and skull-stripped
(at least :data:`MIN_BACKGROUND_FRACTION` of the voxels exactly 0). The bundle's own checks (NaN/Inf, an empty
modality, no brain) run on the stacked volume before it is emitted.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import numpy as np
import torch
from monai.deploy.core import Fragment, Image, OperatorSpec
from monai.deploy.core.domain.dicom_series_selection import StudySelectedSeries
from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator

__all__ = [
    "MIN_BACKGROUND_FRACTION",
    "ORIENTATION",
    "SPACING_MM",
    "BraTSStudyToVolumeOperator",
    "StudyContractError",
]

#: voxel size of the BraTS grid (SRI-24 atlas space), mm, and the tolerance of the check
SPACING_MM, SPACING_TOL_MM = 1.0, 0.01
#: direction cosines of the BraTS grid's voxel axes in the DICOM patient frame (LPS): i, j, k = L, P, S
ORIENTATION = np.eye(3)
ORIENTATION_TOL = 0.01
#: a skull-stripped BraTS volume is mostly background 0 (the real cases here: 85 %)
MIN_BACKGROUND_FRACTION = 0.5
#: largest difference between two series' affines for "one grid", mm
GRID_ATOL_MM = 1e-3


class StudyContractError(ValueError):
    """The DICOM input cannot be read by the model; the message names the series and what is wrong."""


def _series_name(series: object, channel: str) -> str:
    return f"series '{getattr(series, 'SeriesDescription', None) or '?'}' ({channel})"


class BraTSStudyToVolumeOperator(DICOMSeriesToVolumeOperator):
    """Stack the selected series of one study into the bundle's 4-channel input (see the module docstring).

    Named inputs: ``study_selected_series_list`` (from ``DICOMSeriesSelectorOperator``) and ``dicom_study_list``
    (from ``DICOMDataLoaderOperator``, to name what the input holds). Named outputs: ``image`` and
    ``study_selected_series_list``.

    Args:
        fragment: the application.
        channels: the selection names, in the bundle's channel order.
        runtime: the bundle's runtime layer (its ``scripts`` package), whose input checks run on the volume.
    """

    def __init__(self, fragment: Fragment, *args, channels: Sequence[str], runtime: str = "scripts", **kwargs) -> None:
        self.channels = tuple(channels)
        self.load_case = importlib.import_module(f"{runtime}.transforms.load_case")
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("study_selected_series_list")
        spec.input("dicom_study_list")
        spec.output("image")
        spec.output("study_selected_series_list")

    def compute(self, op_input, op_output, context) -> None:
        studies = op_input.receive("dicom_study_list")
        selected = op_input.receive("study_selected_series_list")
        image, reference = self.stack(studies, selected)
        op_output.emit(image, "image")
        op_output.emit([reference], "study_selected_series_list")

    def select(self, studies: Sequence, selected: Sequence[StudySelectedSeries]) -> tuple[object, list]:
        """(study, its series in channel order) of the one study in the input; refuses what does not fit."""
        if len(studies) != 1:
            uids = ", ".join(s.StudyInstanceUID for s in studies) or "none"
            raise StudyContractError(f"the input holds {len(studies)} DICOM studies ({uids}); give one study per run")
        study = studies[0]
        found = ", ".join(f"'{s.SeriesDescription}'" for s in study.get_all_series()) or "none"
        by_name = selected[0].series_by_selection_name if selected else {}
        series, owner = [], {}
        for channel in self.channels:
            matches = by_name.get(channel, [])
            if not matches:
                raise StudyContractError(
                    f"study {study.StudyInstanceUID}: no series for {channel}: no Series Description matches its "
                    f"rule in series_rules.json (series found: {found})"
                )
            chosen = matches[0].series
            uid = chosen.SeriesInstanceUID
            if uid in owner:
                raise StudyContractError(
                    f"{_series_name(chosen, channel)} was selected for both {owner[uid]} and {channel}; make the "
                    "rules in series_rules.json exclusive"
                )
            owner[uid] = channel
            series.append(matches[0])
        return study, series

    def check_geometry(self, channel: str, series: object, volume: np.ndarray) -> None:
        """Refuse a series that is not on the BraTS grid (1 mm, BraTS axial orientation) or not skull-stripped."""
        name = _series_name(series, channel)
        axes = np.asarray(series.dicom_affine_transform, dtype=float)[:3, :3]
        spacing = np.linalg.norm(axes, axis=0)
        if np.any(np.abs(spacing - SPACING_MM) > SPACING_TOL_MM):
            size = " x ".join(f"{v:.3g}" for v in spacing)
            raise StudyContractError(
                f"{name}: voxels of {size} mm; the model reads {SPACING_MM:g} mm isotropic voxels (BraTS: "
                "co-registered to the SRI-24 atlas and resampled to 1 mm, see the app's README)"
            )
        if np.abs(axes / spacing - ORIENTATION).max() > ORIENTATION_TOL:
            cosines = np.round(axes / spacing, 3).T.tolist()
            raise StudyContractError(
                f"{name}: voxel axes {cosines} (row, column, slice direction in LPS) are not BraTS's axial "
                f"orientation {ORIENTATION.astype(int).tolist()}; resample the study to the BraTS grid"
            )
        background = float((volume == 0).mean())
        if background < MIN_BACKGROUND_FRACTION:
            raise StudyContractError(
                f"{name}: {background:.0%} of the voxels are 0, a skull-stripped BraTS volume has at least "
                f"{MIN_BACKGROUND_FRACTION:.0%}; skull-strip the study first (see the app's README)"
            )

    def stack(self, studies: Sequence, selected: Sequence[StudySelectedSeries]) -> tuple[Image, StudySelectedSeries]:
        """The checked ``(W, H, D, C)`` image and the study with the reference series first."""
        study, chosen = self.select(studies, selected)
        volumes, affines = [], []
        for channel, item in zip(self.channels, chosen):
            series = item.series
            self.prepare_series(series)  # sorts its instances along the slice normal, computes the affines
            volume = np.transpose(np.asarray(self.generate_voxel_data(series), dtype=np.float32), (2, 1, 0))
            self.check_geometry(channel, series, volume)
            if volumes and volume.shape != volumes[0].shape:
                raise StudyContractError(
                    f"{_series_name(series, channel)}: grid {'x'.join(map(str, volume.shape))} differs from "
                    f"{_series_name(chosen[0].series, self.channels[0])}'s {'x'.join(map(str, volumes[0].shape))}; "
                    "co-register the series to one grid"
                )
            affine = np.asarray(series.nifti_affine_transform, dtype=float)
            if affines and np.abs(affine - affines[0]).max() > GRID_ATOL_MM:
                raise StudyContractError(
                    f"{_series_name(series, channel)}: its position differs from "
                    f"{_series_name(chosen[0].series, self.channels[0])}'s by "
                    f"{np.abs(affine - affines[0]).max():.3g} mm; co-register the series to one grid"
                )
            volumes.append(volume)
            affines.append(affine)
        names = [_series_name(item.series, channel) for channel, item in zip(self.channels, chosen)]
        stacked = np.stack(volumes, axis=-1)
        metadata = {
            "affine": affines[0],
            "original_affine": affines[0].copy(),
            "spacing": np.linalg.norm(affines[0][:3, :3], axis=0),
            "spatial_shape": np.asarray(stacked.shape[:3]),
            "original_channel_dim": -1,
            "space": "RAS",
            "case_id": str(getattr(study, "StudyInstanceUID", "study")),
            "filename_or_obj": names[0],
            self.load_case.CASE_FILES_META: ", ".join(names),
        }
        channels_first = torch.from_numpy(np.moveaxis(stacked, -1, 0))
        # the bundle's own checks: NaN/Inf, an empty modality, no brain
        self.load_case.check_image(metadata["case_id"], channels_first, names, len(self.channels))
        reference = StudySelectedSeries(study)
        for item in chosen:
            reference.add_selected_series(item)
        return Image(stacked, metadata=metadata), reference
