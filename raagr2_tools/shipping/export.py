"""Export a bundle's trained network for deployment and check every artefact against PyTorch on real slices.

``python -m monai.bundle run export --config_file <bundle>/configs/export.json --bundle_root <bundle>`` runs
:class:`BundleExporter`, which writes into ``<bundle>/models/``:

- ``model.ts``: ``monai.bundle ckpt_export`` with ``configs/inference.json`` and the metadata embedded (MONAI Deploy);
- ``model.onnx``: one file, input ``image`` / output ``pred`` with dynamic batch, height and width, bundle metadata
  in ``metadata_props``;
- ``model_int8.onnx``: static QDQ INT8, per-channel weights, calibrated on real slices, head kept in float;
- ``model_fp16.onnx``: FP16 inside, FP32 I/O, for the CUDA/TensorRT execution providers;
- ``model_openvino.{xml,bin}``: the OpenVINO IR in FP32 (backends ``openvino`` and, compiled in bfloat16,
  ``openvino_bf16``);
- ``model_openvino_int8.{xml,bin}``: NNCF post-training INT8, calibrated on the same real slices, head in float;
- ``export_report.{json,md}``: FP32 parity (max |difference| on real slices, must be <= ``fp32_atol``) and, for
  INT8, FP16 and BF16, the per-case WT/TC/ET Dice against the labels next to PyTorch FP32's, with the difference
  and the mask agreement with PyTorch FP32; each CPU backend's check (``checks``): passed when FP32 parity holds,
  or for a reduced precision when its mean mask agreement per region is >= ``agreement_threshold`` and its mean
  Dice loss per region is <= ``max_dice_drop``;
- ``backends.json``: PyTorch and every CPU backend timed on real slices of the bundle's inference size on this
  machine, with the checks and the CPU model and flags: what ``backend: auto`` chooses from
  (:mod:`custom_modules.inference.auto`).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_dice

from custom_modules.artefacts import (
    artefact_entry,
    commit_staged,
    complete_interrupted_commit,
    sha256_file,
    verify_artefact,
)
from custom_modules.constants import REGION_CHANNELS, REGION_DISPLAY_ORDER
from custom_modules.files import TEMP_PREFIX, remove_stale_temporaries, write_text_atomic
from custom_modules.handlers import load_state_dict_checked, load_weights
from custom_modules.inference import BACKEND_RECORD, OnnxRuntimeNetwork, OpenVinoNetwork
from custom_modules.locks import folder_lock
from custom_modules.onnx_runner import CONTRACT_KEY
from custom_modules.transforms import LabelMapPostprocessing, delivered_regions
from raagr2_tools.authoring.config import bundle_network, bundle_parser
from raagr2_tools.reports.tables import markdown_table

from .backend_timing import backend_record, time_backends
from .cases import load_cases, pad_to_multiple, sample_slices
from .contract import inference_contract
from .fp16 import convert_fp16
from .onnx import export_onnx
from .openvino import export_openvino, quantize_openvino_int8
from .quantize import quantize_int8

__all__ = ["FORMATS", "FILES", "ExportParityError", "BundleExporter", "onnx_metadata"]

logger = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx", "onnx_int8", "onnx_fp16", "openvino", "openvino_int8")
FILES = {
    "torchscript": "model.ts",
    "onnx": "model.onnx",
    "onnx_int8": "model_int8.onnx",
    "onnx_fp16": "model_fp16.onnx",
    "openvino": "model_openvino.xml",
    "openvino_int8": "model_openvino_int8.xml",
}
#: export format -> the CPU backend (``custom_modules.inference.BACKENDS``) that runs it; FP16 is for GPUs
CPU_BACKENDS = {
    "torchscript": "torchscript",
    "onnx": "onnxruntime",
    "onnx_int8": "onnxruntime_int8",
    "openvino": "openvino",
    "openvino_int8": "openvino_int8",
}
#: reduced precisions scored against PyTorch FP32: report name -> the runner (CPU backend name; FP16: its format)
REDUCED = {
    "onnx_int8": "onnxruntime_int8",
    "onnx_fp16": "onnx_fp16",
    "openvino_bf16": "openvino_bf16",
    "openvino_int8": "openvino_int8",
}


class ExportParityError(RuntimeError):
    """An FP32 export differs from PyTorch by more than the tolerance; the message names the file."""


def onnx_metadata(bundle_root: Path) -> dict[str, str]:
    """``metadata_props`` for the ONNX files: bundle name and version, channel order, normalisation, output."""
    meta = json.loads((bundle_root / "configs" / "metadata.json").read_text())
    fmt = meta["network_data_format"]
    image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]
    norm = [
        t
        for t in bundle_parser(bundle_root).get("preprocessing", {}).get("transforms", [])
        if str(t.get("_target_", "")).endswith("ZScoreNonzerod")
    ]
    norm_text = (
        "z-score per channel over the brain (nonzero) voxels of the whole volume (ZScoreNonzerod: float64 "
        "statistics, float32 out); background stays 0"
        if norm
        else "none"
    )
    return {
        "bundle": bundle_root.resolve().name,
        "bundle_name": meta.get("name", ""),
        "bundle_version": meta.get("version", ""),
        "input": f"image: float32 (batch, {image['num_channels']}, H, W), H and W multiples of 16",
        "channel_order": ",".join(image["channel_def"][str(i)] for i in range(len(image["channel_def"]))),
        "normalisation": norm_text,
        "output": f"pred: float32 (batch, {pred['num_channels']}, H, W) {pred['format']} of "
        + ",".join(pred["channel_def"][str(i)] for i in range(len(pred["channel_def"]))),
        "output_meaning": meta.get("pred_classes", ""),
        "precision": "float32",
        CONTRACT_KEY: json.dumps(inference_contract(bundle_root)),
    }


def _dice(pred: torch.Tensor, label: torch.Tensor) -> dict[str, float]:
    """Per-region Dice of (3, H, W, D) binary maps; empty vs empty = 1."""
    values = compute_dice(pred[None].float(), label[None].float(), include_background=True, ignore_empty=False)[0]
    return {f"{r}_dice": float(v) for r, v in zip(REGION_CHANNELS, values)}


class BundleExporter:
    """Write and check the deployment artefacts of the bundle at ``bundle_root`` (see the module docstring).

    Args:
        bundle_root: the bundle folder; needs ``configs/{inference,metadata}.json`` and ``models/model.pt``.
        dataset_dir, data_list_file_path: the real cases (MONAI datalist) for calibration and checks.
        formats: subset of :data:`FORMATS`; ``onnx_int8``/``onnx_fp16`` need ``onnx``.
        calibration_split: datalist list whose slices calibrate INT8 (``calibration_slices`` of them,
            ``tumour_fraction`` holding tumour).
        eval_split, eval_cases: the cases on which parity slices are taken and INT8/FP16 Dice is measured.
        parity_slices: real slices for the FP32 parity check (``fp32_atol``: largest allowed |difference|).
        opset: ONNX opset (>= 17).
        agreement_threshold: a reduced precision passes its check when its mean mask agreement (Dice of its label
            map's regions against PyTorch FP32's) is at least this for every region ...
        max_dice_drop: ... and its mean Dice against the labels falls by at most this (0.01 = one Dice point) per
            region, where the evaluation cases have labels.
        timing_repeats: timed passes per backend for ``backends.json`` (after one warm-up pass).
        timing_batch: slices per timed pass (the bundle's ``sw_batch_size``).
        onnx_int8_activations, onnx_int8_format: ONNX Runtime INT8 flavour (:func:`quantize_int8`): ``"uint8"``
            (U8S8) or ``"int8"`` (S8S8) activations, ``"qdq"`` or ``"qoperator"`` graph.
    """

    def __init__(
        self,
        bundle_root: str | Path,
        dataset_dir: str | Path,
        data_list_file_path: str | Path,
        formats: Sequence[str] = FORMATS,
        calibration_split: str = "training",
        calibration_slices: int = 64,
        tumour_fraction: float = 0.5,
        eval_split: str = "test",
        eval_cases: int = 4,
        parity_slices: int = 8,
        fp32_atol: float = 1e-4,
        opset: int = 18,
        agreement_threshold: float = 0.99,
        max_dice_drop: float = 0.01,
        timing_repeats: int = 3,
        timing_batch: int = 8,
        onnx_int8_activations: str = "uint8",
        onnx_int8_format: str = "qdq",
    ) -> None:
        unknown = sorted(set(formats) - set(FORMATS))
        if unknown:
            raise ValueError(f"unknown export formats {unknown}; choose from {FORMATS}")
        derived = [f for f in ("onnx_int8", "onnx_fp16", "openvino", "openvino_int8") if f in formats]
        if derived and "onnx" not in formats:
            raise ValueError(f"{', '.join(derived)} are made from model.onnx: add 'onnx' to formats")
        if "openvino_int8" in formats and "openvino" not in formats:
            raise ValueError("openvino_int8 is made from model_openvino.xml: add 'openvino' to formats")
        if opset < 17:
            raise ValueError(f"opset must be >= 17, got {opset}")
        if timing_repeats < 1 or timing_batch < 1:
            raise ValueError(f"timing_repeats and timing_batch must be >= 1, got {timing_repeats}, {timing_batch}")
        self.bundle_root = Path(bundle_root)
        self.models = self.bundle_root / "models"
        self.dataset_dir, self.data_list_file_path = dataset_dir, data_list_file_path
        self.formats = [f for f in FORMATS if f in formats]
        self.calibration_split, self.calibration_slices = calibration_split, calibration_slices
        self.tumour_fraction = tumour_fraction
        self.eval_split, self.eval_cases, self.parity_slices = eval_split, eval_cases, parity_slices
        self.fp32_atol, self.opset = fp32_atol, opset
        self.agreement_threshold, self.max_dice_drop = agreement_threshold, max_dice_drop
        self.timing_repeats, self.timing_batch = timing_repeats, timing_batch
        self.onnx_int8 = {"activations": onnx_int8_activations, "quant_format": onnx_int8_format}

    # ------------------------------------------------------------------------------------------------------
    def network(self, ckpt: Path | None = None) -> torch.nn.Module:
        """``network_def`` of ``configs/inference.json`` with ``ckpt`` (default ``models/model.pt``) loaded, eval.

        The weights are checked against ``models/manifest.json`` and loaded weights-only
        (:func:`custom_modules.handlers.load_weights`); every failure names the file."""
        if ckpt is None:
            ckpt = self.models / "model.pt"
            verify_artefact(ckpt)
        net = bundle_network(self.bundle_root)
        load_state_dict_checked(net, load_weights(ckpt, "cpu", verify=False), self.models / "model.pt")
        return net.eval()

    def _torchscript(self, tmp: Path, ckpt: Path) -> Path:
        from monai.bundle import ckpt_export

        configs = self.bundle_root / "configs"
        target = tmp / FILES["torchscript"]
        ckpt_export(
            net_id="network_def",
            filepath=str(target),
            ckpt_file=str(ckpt),
            meta_file=str(configs / "metadata.json"),
            config_file=str(configs / "inference.json"),
            bundle_root=str(self.bundle_root),
        )
        return target

    @staticmethod
    def _max_abs_diff(reference: torch.nn.Module, candidate: torch.nn.Module, batch: torch.Tensor) -> float:
        with torch.no_grad():
            return float((candidate(batch) - reference(batch)).abs().max())

    def _segment(self, net: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
        """(C, H, W, D) -> (3, H, W, D) bool TC/WT/ET of the label map the bundle delivers: the inferer and the
        post-processing options of ``configs/inference.json`` (its defaults: what ships), read back as regions."""
        parser = bundle_parser(self.bundle_root)
        inferer = parser.get_parsed_content("inferer", instantiate=True)
        options = LabelMapPostprocessing(
            *(parser.get_parsed_content(k) for k in ("keep_largest_component", "min_component_voxels", "et_min_voxels"))
        )
        with torch.no_grad():
            return delivered_regions(torch.sigmoid(inferer(image[None], net)[0]) > 0.5, options)

    def _check_disjoint_patients(
        self, calibration: Sequence[dict[str, Any]], evaluation: Sequence[dict[str, Any]]
    ) -> None:
        """INT8 is calibrated on patients it is not scored on.

        Raises:
            ValueError: naming the datalist and the shared patients.
        """
        shared = sorted({c["patient_id"] for c in calibration} & {c["patient_id"] for c in evaluation})
        if shared:
            raise ValueError(
                f"{self.data_list_file_path}: calibration split '{self.calibration_split}' and evaluation split "
                f"'{self.eval_split}' share patients {shared}; calibrate on training patients only"
            )

    # ------------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Write every format in ``formats`` and the report as one set; returns the report.

        Everything is written into a staging folder ``models/.tmp_export_*`` from a snapshot of ``model.pt``
        and moved into ``models/`` only when every check passed (:func:`custom_modules.artefacts.commit_staged`),
        with each file's checksum and that of the weights in ``models/manifest.json``. A killed export leaves
        the previous set (its staging folder is removed at the next start) or, killed while moving, a journal
        the next start completes. Two exports of one bundle at a time are refused.

        Raises:
            ExportParityError: an FP32 export differs from PyTorch by more than ``fp32_atol`` on real slices.
        """
        start = time.perf_counter()
        self.models.mkdir(parents=True, exist_ok=True)
        with folder_lock(self.models, "export"):
            complete_interrupted_commit(self.models)
            remove_stale_temporaries(self.models, min_age_s=0)
            with tempfile.TemporaryDirectory(dir=self.models, prefix=f"{TEMP_PREFIX}export_") as tmp_name:
                report = self._export_staged(Path(tmp_name), start)
        print(render_export_markdown(report), flush=True)
        return report

    def _export_staged(self, tmp: Path, start: float) -> dict[str, Any]:
        verify_artefact(self.models / "model.pt")
        snapshot = tmp / "weights.pt"
        shutil.copyfile(self.models / "model.pt", snapshot)
        weights = ("model.pt", sha256_file(snapshot))
        net = self.network(snapshot)
        eval_cases = list(
            load_cases(self.bundle_root, self.dataset_dir, self.data_list_file_path, self.eval_split, self.eval_cases)
        )
        slices, where = sample_slices(eval_cases, self.parity_slices, self.tumour_fraction)
        batch = torch.from_numpy(pad_to_multiple(np.stack(slices)))
        report: dict[str, Any] = {
            "bundle": self.bundle_root.resolve().name,
            "weights_sha256": weights[1],
            "formats": {},
            "fp32_atol": self.fp32_atol,
            "parity_slices": where,
            "parity_input_shape": list(batch.shape),
        }
        if "torchscript" in self.formats:
            logger.info("exporting TorchScript (monai.bundle ckpt_export)")
            ts_path = self._torchscript(tmp, snapshot)
            diff = self._max_abs_diff(net, torch.jit.load(str(ts_path), map_location="cpu").eval(), batch)
            self._accept("torchscript", ts_path, diff, report)
        if "onnx" in self.formats:
            logger.info("exporting ONNX (dynamo, opset %d)", self.opset)
            onnx_path = export_onnx(
                net, tmp / FILES["onnx"], (1, batch.shape[1], 64, 64), self.opset, onnx_metadata(self.bundle_root)
            )
            diff = self._max_abs_diff(net, OnnxRuntimeNetwork(onnx_path, providers=["CPUExecutionProvider"]), batch)
            self._accept("onnx", onnx_path, diff, report)
        if "openvino" in self.formats:
            logger.info("converting to OpenVINO IR (FP32)")
            ov_path = export_openvino(tmp / FILES["onnx"], tmp / FILES["openvino"], onnx_metadata(self.bundle_root))
            diff = self._max_abs_diff(net, OpenVinoNetwork(ov_path, precision="fp32"), batch)
            self._accept("openvino", ov_path, diff, report)
        if "onnx_int8" in self.formats or "openvino_int8" in self.formats:
            logger.info("calibrating INT8 on %d real slices (%s)", self.calibration_slices, self.calibration_split)
            calibration = list(
                load_cases(self.bundle_root, self.dataset_dir, self.data_list_file_path, self.calibration_split)
            )
            self._check_disjoint_patients(calibration, eval_cases)
            cal_slices, cal_where = sample_slices(calibration, self.calibration_slices, self.tumour_fraction)
            provenance = {
                "calibration_split": self.calibration_split,
                "calibration_tumour_slices": sum(r["tumour"] for r in cal_where),
                "calibration_patients": sorted({c["patient_id"] for c in calibration}),
            }
            if "onnx_int8" in self.formats:
                done = quantize_int8(tmp / FILES["onnx"], tmp / FILES["onnx_int8"], cal_slices, **self.onnx_int8)
                report["formats"]["onnx_int8"] = {"file": FILES["onnx_int8"], **done, **provenance}
            if "openvino_int8" in self.formats:
                logger.info("quantising the OpenVINO IR to INT8 (NNCF)")
                done = quantize_openvino_int8(tmp / FILES["openvino"], tmp / FILES["openvino_int8"], cal_slices)
                report["formats"]["openvino_int8"] = {"file": FILES["openvino_int8"], **done, **provenance}
        if "onnx_fp16" in self.formats:
            logger.info("converting to FP16")
            done = convert_fp16(tmp / FILES["onnx"], tmp / FILES["onnx_fp16"])
            report["formats"]["onnx_fp16"] = {"file": FILES["onnx_fp16"], **done}
        for entry in report["formats"].values():
            entry["size_mib"] = round(sum(f.stat().st_size for f in _files(tmp, entry["file"])) / 2**20, 3)
        runners = self._runners(net, tmp)
        # what OpenVINO compiled on this CPU: bf16 asked for runs f32 without native bfloat16
        report["runs_precision"] = {n: r.runs_precision for n, r in runners.items() if hasattr(r, "runs_precision")}
        report["dice"] = self._region_dice(runners, eval_cases)
        report["checks"] = self._checks(report)
        logger.info("timing PyTorch and %d exported backends on this CPU", len(report["checks"]) - 1)
        timing_batch = torch.from_numpy(pad_to_multiple(np.stack(self._timing_slices(eval_cases))))
        timings = time_backends({name: runners[name] for name in report["checks"]}, timing_batch, self.timing_repeats)
        report["seconds"] = round(time.perf_counter() - start, 1)
        write_text_atomic(tmp / BACKEND_RECORD, json.dumps(backend_record(timings, report["checks"]), indent=2) + "\n")
        write_text_atomic(tmp / "export_report.json", json.dumps(report, indent=2) + "\n")
        write_text_atomic(tmp / "export_report.md", render_export_markdown(report))
        entries = {
            f.name: artefact_entry(f, weights) for e in report["formats"].values() for f in _files(tmp, e["file"])
        }
        for name in ("export_report.json", "export_report.md", BACKEND_RECORD):
            entries[name] = artefact_entry(tmp / name, weights)
        commit_staged(self.models, tmp, entries)
        logger.info("wrote %s to %s", ", ".join(sorted(entries)), self.models)
        return report

    def _accept(self, fmt: str, staged: Path, diff: float, report: dict[str, Any]) -> None:
        """Record a checked FP32 artefact, or raise when it differs from PyTorch."""
        if not diff <= self.fp32_atol:
            raise ExportParityError(
                f"{self.models / FILES[fmt]}: max |{fmt} - PyTorch| = {diff:.3g} on real slices exceeds "
                f"{self.fp32_atol:g}; nothing was written"
            )
        report["formats"][fmt] = {"file": FILES[fmt], "max_abs_diff": diff, "parity": "ok"}

    def _runners(self, net: torch.nn.Module, folder: Path) -> dict[str, torch.nn.Module]:
        """PyTorch FP32 (``torch``) and every CPU backend and reduced precision of the artefacts in ``folder``,
        by backend name (``custom_modules.inference.BACKENDS``; ``onnx_fp16`` by its format name)."""
        runners: dict[str, torch.nn.Module] = {"torch": net}
        cpu = ["CPUExecutionProvider"]
        for fmt in self.formats:
            path = folder / FILES[fmt]
            if fmt == "torchscript":
                runners["torchscript"] = torch.jit.load(str(path), map_location="cpu").eval()
            elif fmt in ("onnx", "onnx_int8"):
                runners[CPU_BACKENDS[fmt]] = OnnxRuntimeNetwork(path, providers=cpu)
            elif fmt == "onnx_fp16":
                runners["onnx_fp16"] = OnnxRuntimeNetwork(path, providers=cpu)
            elif fmt == "openvino":
                runners["openvino"] = OpenVinoNetwork(path, precision="fp32")
                runners["openvino_bf16"] = OpenVinoNetwork(path, precision="bf16")
            elif fmt == "openvino_int8":
                runners["openvino_int8"] = OpenVinoNetwork(path, precision="fp32")
        return runners

    def _timing_slices(self, cases: Sequence[dict[str, Any]]) -> list[np.ndarray]:
        """``timing_batch`` real brain slices of the evaluation cases (the bundle's inference size)."""
        slices, _ = sample_slices(cases, self.timing_batch, self.tumour_fraction)
        return slices

    def _checks(self, report: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Per CPU backend: ``{"passed", "basis"}``. FP32 backends pass by parity; reduced precisions by mean
        mask agreement >= ``agreement_threshold`` and mean Dice drop <= ``max_dice_drop`` per region."""
        checks: dict[str, dict[str, Any]] = {"torch": {"passed": True, "basis": "reference (PyTorch FP32)"}}
        for fmt, entry in report["formats"].items():
            if "max_abs_diff" in entry:
                checks[CPU_BACKENDS[fmt]] = {
                    "passed": True,
                    "basis": f"FP32 parity: max |diff| {entry['max_abs_diff']:.1e} <= {self.fp32_atol:g}",
                }
        summary = (report.get("dice") or {}).get("summary", {})
        for name, regions in summary.items():
            if name == "onnx_fp16":
                continue  # a GPU format; not run on the CPU
            agreement = {r: regions[f"{r}_dice_vs_fp32"]["mean"] for r in REGION_DISPLAY_ORDER}
            drops = {
                r: -regions[f"{r}_dice_delta"]["mean"] for r in REGION_DISPLAY_ORDER if f"{r}_dice_delta" in regions
            }
            passed = min(agreement.values()) >= self.agreement_threshold and all(
                d <= self.max_dice_drop + 1e-12 for d in drops.values()
            )
            basis = (
                "mean mask agreement with PyTorch FP32 "
                + ", ".join(f"{r.upper()} {v:.4f}" for r, v in agreement.items())
                + f" (need >= {self.agreement_threshold:g})"
            )
            if drops:
                basis += "; mean Dice change " + ", ".join(f"{r.upper()} {-100 * d:+.2f}" for r, d in drops.items())
                basis += f" points (need >= {-100 * self.max_dice_drop:+.2f})"
            else:
                basis += "; no labels: Dice change not measured"
            basis += f" on the {self.eval_split} patients"
            checks[REDUCED[name]] = {"passed": bool(passed), "basis": basis}
        return checks

    def _region_dice(self, runners: dict[str, torch.nn.Module], cases: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Per-case region Dice of PyTorch FP32 and of each reduced precision, and the differences."""
        reduced = [name for name, runner in REDUCED.items() if runner in runners]
        if not reduced or not cases:
            return {}
        backends = {"torch_fp32": runners["torch"], **{name: runners[REDUCED[name]] for name in reduced}}
        rows = []
        for case in cases:
            preds = {name: self._segment(model, case["image"]) for name, model in backends.items()}
            row: dict[str, Any] = {"case_id": case["case_id"]}
            for name, pred in preds.items():
                agreement = _dice(pred, preds["torch_fp32"])
                row[name] = {
                    **(_dice(pred, case["label"]) if case["label"] is not None else {}),
                    **{f"{k}_vs_fp32": v for k, v in agreement.items()},
                }
            rows.append(row)
        summary = {}
        for name in reduced:
            summary[name] = {}
            for region in REGION_CHANNELS:
                key = f"{region}_dice"
                if all(key in r[name] for r in rows):
                    summary[name][f"{key}_delta"] = _spread([r[name][key] - r["torch_fp32"][key] for r in rows])
                summary[name][f"{key}_vs_fp32"] = _spread([r[name][f"{key}_vs_fp32"] for r in rows])
        return {
            "split": self.eval_split,
            "patients": sorted({c["patient_id"] for c in cases}),
            "inference": "inferer and post-processing of the bundle's inference.json as shipped; label map scored",
            "cases": rows,
            "summary": summary,
        }


def _files(folder: Path, name: str) -> list[Path]:
    """The files of the artefact ``name`` in ``folder``: an OpenVINO ``.xml`` and its ``.bin``, else the file."""
    path = folder / name
    return [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]


def _points(spread: dict[str, float]) -> str:
    """A Dice-delta spread in points x100: ``mean ± sd [min, max]``."""
    return (
        f"{100 * spread['mean']:+.2f} ± {100 * spread['std']:.2f} "
        f"[{100 * spread['min']:+.2f}, {100 * spread['max']:+.2f}]"
    )


def _spread(values: Sequence[float]) -> dict[str, float]:
    """``{"mean", "std", "min", "max", "n"}`` of per-case values (std with ddof=0; one case: std 0)."""
    array = np.asarray(values, dtype=float)
    return {
        "mean": float(array.mean()),
        "std": float(array.std()),
        "min": float(array.min()),
        "max": float(array.max()),
        "n": int(array.size),
    }


def render_export_markdown(report: dict[str, Any]) -> str:
    """The export report as Markdown: one row per artefact, then the reduced-precision Dice table."""
    lines = [
        f"# Export report: {report['bundle']}",
        "",
        f"FP32 parity on {len(report['parity_slices'])} real slices (input {report['parity_input_shape']}), "
        f"tolerance {report['fp32_atol']:g}.",
        "",
    ]
    artefacts = []
    for name, entry in report["formats"].items():
        check = (
            f"max abs diff {entry['max_abs_diff']:.2e} vs PyTorch"
            if "max_abs_diff" in entry
            else f"calibrated on {entry['calibration_slices']} real slices "
            f"({entry['calibration_tumour_slices']} with tumour), "
            f"float nodes: {len(entry['float_nodes'])}"
            if name in ("onnx_int8", "openvino_int8")
            else "FP16 inside, FP32 I/O"
        )
        artefacts.append([name, f"`{entry['file']}`", f"{entry['size_mib']:.2f}", check])
    lines.append(markdown_table(["artefact", "file", "size (MiB)", "check"], artefacts).rstrip("\n"))
    dice = report.get("dice") or {}
    if dice:
        lines += [
            "",
            f"Region Dice on the `{dice['split']}` patients {', '.join(dice['patients'])} ({dice['inference']}); "
            "delta = format - PyTorch FP32, in Dice points x100, mean ± sd [min, max] over cases; "
            "agreement = Dice of the format's mask against PyTorch FP32's, mean ± sd.",
            "",
        ]
        regions = [r.upper() for r in REGION_DISPLAY_ORDER]
        header = ["format"] + [f"{r} delta" for r in regions] + [f"{r} agreement" for r in regions]
        table = []
        for name, summary in dice["summary"].items():
            deltas = [
                _points(summary[f"{r}_dice_delta"]) if f"{r}_dice_delta" in summary else "n/a"
                for r in REGION_DISPLAY_ORDER
            ]
            agree = [
                f"{summary[f'{r}_dice_vs_fp32']['mean']:.4f} ± {summary[f'{r}_dice_vs_fp32']['std']:.4f}"
                for r in REGION_DISPLAY_ORDER
            ]
            table.append([name, *deltas, *agree])
        lines.append(markdown_table(header, table).rstrip("\n"))
    checks = report.get("checks") or {}
    if checks:
        lines += [
            "",
            "CPU backend checks (what `backend: auto` may choose from; timings in `backends.json`):",
            "",
            markdown_table(
                ["backend", "check", "basis"],
                [[name, "passed" if c["passed"] else "failed", c["basis"]] for name, c in checks.items()],
            ).rstrip("\n"),
        ]
    runs = report.get("runs_precision") or {}
    if runs:
        lines += ["", "OpenVINO compiled on this CPU: " + ", ".join(f"{n} in {p}" for n, p in runs.items()) + "."]
        if runs.get("openvino_bf16") not in (None, "bf16"):
            lines.append(
                "This CPU has no native bfloat16: `openvino_bf16` ran in f32 here, and `backend: auto` leaves it out "
                "on such CPUs."
            )
    return "\n".join(lines) + "\n"
