"""Segment one case with a bundle's ``model.onnx`` alone: onnxruntime, nibabel and numpy, no torch, no MONAI.

    python onnx_runner.py MODEL.onnx T1C T1 T2 FLAIR --out CASE_pred.nii.gz   # four 3D files, this order
    python onnx_runner.py MODEL.onnx CASE_4D.nii.gz --out CASE_pred.nii.gz    # one 4D file, channels last
    python onnx_runner.py MODEL.onnx --describe                               # print what the model expects

A packaged bundle ships this file as ``scripts/onnx_runner.py``; run it by its path (it imports nothing of the
bundle). Everything it needs is read from the ONNX file's ``metadata_props`` key ``inference_contract``
(:data:`CONTRACT_KEY`, JSON written by the bundle's export): channel order and input space, normalisation, slice
axis, in-plane window, overlap and padding, which slices are skipped, the activation, threshold and the rule from
regions to BraTS labels. It reproduces the bundle's ``run inference`` (default options) with
``backend: onnxruntime``:

1. load the four modalities as stored (nibabel's voxel array, no reorientation), as float32, stacked first;
2. z-score each channel over its nonzero voxels (mean and population standard deviation of the whole volume,
   float64, then float32; zero voxels stay 0): :func:`zscore_nonzero`, the function the bundle itself runs;
3. cut the volume along ``slice_axis``; a slice whose four channels are all 0 is background; the others go
   through the network in windows of ``window`` pixels (zero-padded evenly when the slice is smaller, windows
   ``window * (1 - overlap)`` apart when larger, overlapping outputs averaged), ``batch`` windows per call;
4. ``sigmoid(pred) >= threshold``, decided on the logits (:func:`regions_from_logits`, as the bundle), gives the
   regions; ``label_rule`` paints them into one uint8 map;
5. write the map with the first input's affine and header (the input's grid).

A file without the contract (an export older than this runner), or whose contract asks for post-processing this
runner does not do, is refused with a message that says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CONTRACT_KEY",
    "CONTRACT_FORMAT",
    "logit_threshold",
    "read_contract",
    "regions_from_logits",
    "segment_case",
    "window_starts",
    "zscore_nonzero",
]

#: the ``metadata_props`` key that holds the JSON contract
CONTRACT_KEY = "inference_contract"
#: the contract layout this runner reads
CONTRACT_FORMAT = 1


class RunnerError(ValueError):
    """The model or an input cannot be used; the message names the file and the problem."""


def read_contract(session: Any, model_path: str | Path) -> dict[str, Any]:
    """The inference contract stored in an ONNX Runtime session's model metadata."""
    props = session.get_modelmeta().custom_metadata_map
    if CONTRACT_KEY not in props:
        raise RunnerError(
            f"{model_path}: no '{CONTRACT_KEY}' in the model metadata; re-export the bundle "
            "(python -m monai.bundle run export ...) to write it"
        )
    contract = json.loads(props[CONTRACT_KEY])
    if contract.get("format") != CONTRACT_FORMAT:
        raise RunnerError(f"{model_path}: inference contract format {contract.get('format')}, this runner reads 1")
    extra = {k: v for k, v in contract.get("options", {}).items() if v}
    if extra:
        raise RunnerError(f"{model_path}: the bundle runs with {extra}; this runner reproduces only the defaults")
    return contract


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start pixels of the windows along one axis of ``size`` pixels (``size >= window``), as MONAI's
    ``sliding_window_inference`` places them: ``int(window * (1 - overlap))`` apart, the last one flush with the
    end."""
    interval = window if window == size else max(int(window * (1 - overlap)), 1)
    count = next(i for i in range(size) if i * interval + window >= size) + 1
    return [i * interval - max(i * interval + window - size, 0) for i in range(count)]


def _load(files: Sequence[Path], channels: int) -> tuple[np.ndarray, Any]:
    """``(C, X, Y, Z)`` float32 image of the case and the first file's nibabel image."""
    import nibabel as nib

    images = [nib.load(str(f)) for f in files]
    arrays = [np.asanyarray(im.dataobj).astype(np.float32) for im in images]
    if len(files) == 1:
        if arrays[0].ndim != 4 or arrays[0].shape[-1] != channels:
            raise RunnerError(f"{files[0]}: shape {arrays[0].shape}, expected (X, Y, Z, {channels}) with channels last")
        return np.moveaxis(arrays[0], -1, 0).copy(), images[0]
    for f, a, im in zip(files, arrays, images):
        if a.shape != arrays[0].shape:
            raise RunnerError(f"{f}: shape {a.shape} differs from {files[0]}'s {arrays[0].shape}")
        if not np.allclose(im.affine, images[0].affine, atol=1e-3):
            raise RunnerError(f"{f}: affine differs from {files[0]}'s; the modalities must share one grid")
    return np.stack(arrays), images[0]


def zscore_nonzero(image: np.ndarray) -> np.ndarray:
    """``(C, ...)`` float32: each channel minus the mean over its nonzero voxels, divided by their population std
    (0 -> 1); zero voxels stay 0. The statistics and the arithmetic are float64 (numpy), then rounded once to
    float32, so every caller gets the same bits (the bundles' :class:`ZScoreNonzerod` calls this function)."""
    out = np.array(image, dtype=np.float32, copy=True)
    for c in range(out.shape[0]):
        mask = out[c] != 0
        if not mask.any():
            continue
        values = out[c][mask].astype(np.float64)
        std = values.std()
        out[c][mask] = ((values - values.mean()) / (std if std != 0 else 1.0)).astype(np.float32)
    return out


def logit_threshold(threshold: float) -> float:
    """The logit ``ln(t / (1 - t))`` at which the sigmoid reaches ``threshold`` (0.0 for 0.5, exactly)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold {threshold} is not a probability in (0, 1)")
    return float(np.log(threshold) - np.log1p(-threshold))


def regions_from_logits(logits: Any, threshold: float) -> Any:
    """Binary regions ``sigmoid(logits) >= threshold``, decided on the logits (``logits >= logit_threshold``), so
    that no float32 rounding of the sigmoid near the threshold can flip a voxel between implementations. Works on
    numpy arrays and torch tensors alike (a boolean array of the same shape)."""
    return logits >= logit_threshold(threshold)


def _windowed(slices: np.ndarray, run: Any, window: Sequence[int], overlap: float, batch: int) -> np.ndarray:
    """Network output of ``(N, C, H, W)`` slices through padded, overlapping windows, outputs averaged."""
    n, _, h, w = slices.shape
    pad = [(max(window[0] - h, 0)), (max(window[1] - w, 0))]
    padded = np.pad(slices, ((0, 0), (0, 0), (pad[0] // 2, pad[0] - pad[0] // 2), (pad[1] // 2, pad[1] - pad[1] // 2)))
    ph, pw = padded.shape[2:]
    boxes = [(y, x) for y in window_starts(ph, window[0], overlap) for x in window_starts(pw, window[1], overlap)]
    out = None
    count = np.zeros((ph, pw), dtype=np.float32)
    for y, x in boxes:
        count[y : y + window[0], x : x + window[1]] += 1
    for start in range(0, n, batch):
        chunk = padded[start : start + batch]
        for y, x in boxes:
            pred = run(np.ascontiguousarray(chunk[:, :, y : y + window[0], x : x + window[1]]))
            if out is None:
                out = np.zeros((n, pred.shape[1], ph, pw), dtype=np.float32)
            out[start : start + batch, :, y : y + window[0], x : x + window[1]] += pred
    out /= count
    return out[:, :, pad[0] // 2 : pad[0] // 2 + h, pad[1] // 2 : pad[1] // 2 + w]


def segment_case(model_path: str | Path, files: Sequence[str | Path], out: str | Path) -> Path:
    """Write the uint8 BraTS label map of the case in ``files`` to ``out`` (``.nii.gz``); returns ``out``."""
    import nibabel as nib
    import onnxruntime

    model_path, out = Path(model_path), Path(out)
    files = [Path(f) for f in files]
    for f in [model_path, *files]:
        if not f.is_file():
            raise RunnerError(f"{f}: not found")
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    contract = read_contract(session, model_path)
    channels = len(contract["channel_order"])
    if len(files) not in (1, channels):
        raise RunnerError(f"{len(files)} input files; give {', '.join(contract['channel_order'])} or one 4D file")
    image, first = _load(files, channels)
    image = zscore_nonzero(image)
    axis = int(contract["slice_axis"])
    volume = np.moveaxis(image, 1 + axis, 1)  # (C, D, H, W): D slices of (H, W) = the other two axes in order
    slices = np.ascontiguousarray(np.moveaxis(volume, 1, 0))  # (D, C, H, W)
    run_slice = slices.reshape(slices.shape[0], -1).any(axis=1) if contract["skip_empty_slices"] else None
    regions_index = {name: i for i, name in enumerate(contract["output_channels"])}
    window = [slices.shape[2 + i] if int(v) <= 0 else int(v) for i, v in enumerate(contract["window"])]
    logits = np.full((slices.shape[0], len(regions_index), *slices.shape[2:]), contract["background_logit"], np.float32)
    chosen = np.arange(slices.shape[0]) if run_slice is None else np.flatnonzero(run_slice)
    if chosen.size:
        (input_name,), (output_name,) = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]

        def run(batch: np.ndarray) -> np.ndarray:
            return session.run([output_name], {input_name: batch})[0]

        logits[chosen] = _windowed(slices[chosen], run, window, float(contract["overlap"]), int(contract["batch"]))
    if contract["activation"] != "sigmoid":
        raise RunnerError(f"{model_path}: activation {contract['activation']!r}; this runner knows 'sigmoid'")
    regions = regions_from_logits(logits, float(contract["threshold"]))  # as the bundle's RegionsFromLogitsd
    labels = np.zeros((slices.shape[0], *slices.shape[2:]), dtype=np.uint8)
    for region, value in contract["label_rule"]:
        labels[regions[:, regions_index[region]]] = value
    labels = np.moveaxis(labels, 0, axis)  # back to the input's voxel axes
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.nii.gz")
    header = first.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_data_shape(labels.shape)
    nib.save(nib.Nifti1Image(labels, first.affine, header), str(tmp))
    tmp.replace(out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="onnx_runner.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="the bundle's model.onnx")
    parser.add_argument("inputs", nargs="*", type=Path, help="T1c T1 T2 FLAIR files, or one 4D file")
    parser.add_argument("--out", type=Path, help="the label map to write (.nii.gz)")
    parser.add_argument("--describe", action="store_true", help="print the model's inference contract and exit")
    args = parser.parse_args(argv)
    try:
        if args.describe:
            import onnxruntime

            session = onnxruntime.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
            print(json.dumps(read_contract(session, args.model), indent=2))
            return 0
        if not args.inputs or args.out is None:
            parser.error("give the input files and --out (or --describe)")
        if args.out.exists():
            raise RunnerError(f"{args.out}: exists; this runner never writes over a file")
        print(segment_case(args.model, args.inputs, args.out))
    except (RunnerError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
