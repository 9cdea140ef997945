"""MONAI Deploy app: one DICOM MR study (T1c, T1, T2, FLAIR series) in, one DICOM SEG (NCR/NET, ED, ET) out.

Usage (in the app's environment, README "MONAI Deploy")::

    python integrations/monai_deploy/app.py --input DICOM_STUDY --output OUT --bundle UNZIPPED_BUNDLE

The graph is MONAI Deploy's own operators with two of this app's between them::

    DICOMDataLoaderOperator -> DICOMSeriesSelectorOperator (series_rules.json: four series by description)
      -> BraTSStudyToVolumeOperator (brats_study.py: one 4-channel volume, the input contract checked)
      -> MonaiBundleInferenceOperator (the packaged bundle's inference.json: its preprocessing without the loader,
         its inferer, its postprocessing without the writer; the network from models/model.ts)
      -> BraTSLabelsToSegmentsOperator (seg_labels.py: BraTS 1, 2, 4 -> segments 1, 2, 3)
      -> DICOMSegmentationWriterOperator (OUT/<SOP Instance UID>.dcm, referencing the T1c series)

``--bundle`` is a packaged bundle unzipped (``run package``; it carries its runtime layer as ``scripts/``) with
``models/model.ts`` (``run export``). The bundle folder is given to the inference operator as ``bundle_path``; it
is not the SDK's model path (``-m``), which the SDK would load as a model of its own. A study the model cannot
read fails before inference with one line that names the series and the problem.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application, Image, IOType
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_seg_writer_operator import DICOMSegmentationWriterOperator
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
from monai.deploy.operators.monai_bundle_inference_operator import (
    BundleConfigNames,
    IOMapping,
    MonaiBundleInferenceOperator,
)

__all__ = ["RAAGR2SegApp", "check_bundle", "main"]

HERE = Path(__file__).resolve().parent
#: the series selection rules: one selection per input channel, named as the bundle's metadata names the channels
SERIES_RULES = HERE / "series_rules.json"


def check_bundle(bundle: Path) -> list[str]:
    """The bundle's input channel names (T1c, T1, T2, FLAIR); refuses a folder the app cannot serve.

    Raises:
        ValueError: naming the missing file and what makes it.
    """
    needs = {
        "configs/inference.json": "not a bundle folder",
        "configs/metadata.json": "not a bundle folder",
        "scripts/__init__.py": "not a packaged bundle (no runtime layer scripts/): package it with run package",
        "models/model.ts": "no TorchScript model: run export on the bundle, then package it",
    }
    for relative, problem in needs.items():
        if not (bundle / relative).is_file():
            raise ValueError(f"{bundle / relative}: not found, {problem}")
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    channel_def = meta["network_data_format"]["inputs"]["image"]["channel_def"]
    return [channel_def[str(i)] for i in range(len(channel_def))]


class RAAGR2SegApp(Application):
    """The app's operator graph (see the module docstring) for one bundle, input and output folder."""

    def __init__(self, bundle: Path, input_dir: Path, output_dir: Path, rules: Path = SERIES_RULES) -> None:
        super().__init__([sys.argv[0]])
        self.bundle, self.input_dir, self.output_dir, self.rules = bundle, input_dir, output_dir, rules

    def compose(self) -> None:
        from brats_study import BraTSStudyToVolumeOperator
        from seg_labels import BraTSLabelsToSegmentsOperator, bundle_labels, segment_descriptions

        channels = check_bundle(self.bundle)
        if str(self.bundle) not in sys.path:
            sys.path.insert(0, str(self.bundle))  # the runtime layer, as the inference operator puts it there too
        rules = self.rules.read_text()
        with tempfile.TemporaryDirectory(prefix="raagr2_no_models_") as no_models:
            context = AppContext({"input": str(self.input_dir), "output": str(self.output_dir), "model": no_models})
        context.models = None  # no SDK model: the inference operator loads the bundle from bundle_path
        loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=self.input_dir, name="loader")
        selector = DICOMSeriesSelectorOperator(self, rules=rules, name="series_selector")
        stacker = BraTSStudyToVolumeOperator(self, channels=channels, name="brats_study")
        inference = MonaiBundleInferenceOperator(
            self,
            input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping("pred", Image, IOType.IN_MEMORY)],
            app_context=context,
            bundle_config_names=BundleConfigNames(config_names=["inference"]),
            bundle_path=self.bundle,
            name="bundle_inference",
        )
        to_segments = BraTSLabelsToSegmentsOperator(self, labels=bundle_labels(self.bundle), name="seg_labels")
        writer = DICOMSegmentationWriterOperator(
            self,
            segment_descriptions=segment_descriptions(self.bundle),
            output_folder=self.output_dir,
            name="seg_writer",
        )
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(loader, stacker, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, stacker, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(stacker, inference, {("image", "image")})
        self.add_flow(inference, to_segments, {("pred", "seg_image")})
        self.add_flow(to_segments, writer, {("seg_image", "seg_image")})
        self.add_flow(stacker, writer, {("study_selected_series_list", "study_selected_series_list")})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python integrations/monai_deploy/app.py", description=__doc__.split("\n")[0])
    parser.add_argument("--input", "-i", type=Path, required=True, help="a folder with one DICOM study")
    parser.add_argument("--output", "-o", type=Path, required=True, help="where the DICOM SEG file is written")
    parser.add_argument("--bundle", "-b", type=Path, required=True, help="a packaged bundle, unzipped")
    parser.add_argument("--rules", type=Path, default=SERIES_RULES, help="series selection rules (JSON)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, str(HERE))
    try:
        bundle = args.bundle.resolve()
        check_bundle(bundle)
        if not args.input.is_dir():
            raise ValueError(f"{args.input}: not a folder")
        args.output.mkdir(parents=True, exist_ok=True)
        before = set(args.output.glob("*.dcm"))
        RAAGR2SegApp(bundle, args.input.resolve(), args.output.resolve(), args.rules.resolve()).run()
        written = sorted(set(args.output.glob("*.dcm")) - before)
        if not written:
            raise RuntimeError(f"{args.output}: no DICOM SEG was written (see the errors above)")
    except Exception as e:  # the SDK's and the contract's errors: one line that names the series or file
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        return 1
    for path in written:
        print(f"DICOM SEG written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
