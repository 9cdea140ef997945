"""Synthetic BraTS-like phantoms for smoke tests and quick training runs.

Usage::

    python -m data_prep.synthetic --out DIR --cases N --seed S [--size H W D]

Writes ``DIR/Phantom_###/Phantom_###_{t1ce,t1,t2,flair,seg}.nii.gz`` (BraTS 2018-2021 layout,
float32 images, uint8 labels 0/1/2/4, 1 mm identity affine). Each case has an ellipsoidal brain
(background exactly 0), a smooth white/grey matter texture, and a tumour of nested regions:
NCR core (1) inside an ET shell (4) inside edema (2). About 1 in 5 tumours has no ET (the core
is all NCR) and about 1 in 7 is tiny. Contrast per modality follows :data:`TISSUE_CONTRAST`;
each modality gets a random smooth bias field, global scale and Gaussian noise. Case ``i`` is
generated from ``numpy.random.default_rng([seed, i])``, so it does not depend on ``--cases``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from custom_modules.constants import MODALITY_ORDER

#: BraTS 2018-2021 file suffix of each modality.
BRATS2021_SUFFIXES: dict[str, str] = {"t1c": "t1ce", "t1": "t1", "t2": "t2", "flair": "flair"}

#: Mean intensity (before bias and scale) per tissue, columns in MODALITY_ORDER (t1c, t1, t2, flair).
TISSUE_CONTRAST: dict[str, tuple[float, float, float, float]] = {
    "white_matter": (0.50, 0.55, 0.30, 0.35),
    "grey_matter": (0.40, 0.42, 0.45, 0.42),
    "edema": (0.42, 0.36, 0.80, 0.85),  # label 2: bright T2/FLAIR
    "necrosis": (0.15, 0.25, 0.85, 0.55),  # label 1: dark T1c, bright T2
    "enhancing": (0.95, 0.35, 0.60, 0.70),  # label 4: bright T1c ring
}
TUMOUR_LABELS: dict[str, int] = {"edema": 2, "necrosis": 1, "enhancing": 4}


def _smooth_noise(shape: Sequence[int], rng: np.random.Generator, cell: int = 8) -> np.ndarray:
    """Smooth random field of ``shape``: a standard-normal grid with ``cell``-voxel spacing, linearly interpolated."""
    field = rng.standard_normal([max(2, -(-s // cell) + 1) for s in shape]).astype(np.float32)
    for axis, size in enumerate(shape):
        x = np.linspace(0, field.shape[axis] - 1, size, dtype=np.float32)
        i = np.minimum(x.astype(np.intp), field.shape[axis] - 2)
        w = np.expand_dims((x - i).astype(np.float32), [a for a in range(len(shape)) if a != axis])
        field = np.take(field, i, axis) * (1 - w) + np.take(field, i + 1, axis) * w
    return field


def _ellipsoid_distance(shape: Sequence[int], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Normalised distance ``sqrt(sum(((x - centre) / radii) ** 2))``; 1 on the ellipsoid surface."""
    axes = np.ogrid[tuple(slice(0, s) for s in shape)]
    return np.sqrt(sum(((a.astype(np.float32) - c) / r) ** 2 for a, c, r in zip(axes, centre, radii)))


def _bias_field(shape: Sequence[int], rng: np.random.Generator, strength: float = 0.15) -> list[np.ndarray]:
    """Smooth multiplicative bias ``exp(sum of one random cosine per axis)`` (~ 1 +- strength),
    as one broadcastable factor per axis (their product is the field)."""
    factors = []
    for axis, size in enumerate(shape):
        x = np.linspace(0, np.pi, size, dtype=np.float32) * rng.uniform(0.5, 1.5) + rng.uniform(0, np.pi)
        axes = [a for a in range(len(shape)) if a != axis]
        factors.append(np.expand_dims(np.exp(strength / len(shape) * np.cos(x)), axes))
    return factors


def make_phantom_case(shape: Sequence[int], rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One phantom exam.

    Args:
        shape: spatial shape (H, W, D) in voxels of 1 mm.
        rng: random generator; the output is a function of its state.

    Returns:
        ``(modalities, label)``: float32 arrays ``{name: (H, W, D)}`` for each name of
        :data:`MODALITY_ORDER`, and a uint8 (H, W, D) label map with BraTS values 0/1/2/4.
    """
    shape = tuple(int(s) for s in shape)
    size = np.array(shape, dtype=np.float32)
    centre = size / 2 + rng.uniform(-0.08, 0.08, 3) * size
    radii = rng.uniform(0.32, 0.45, 3) * size
    brain = _ellipsoid_distance(shape, centre, radii) + 0.04 * _smooth_noise(shape, rng, 16) <= 1

    # tumour: ellipsoid well inside the brain, irregular boundary, nested regions
    direction = rng.standard_normal(3)
    t_centre = centre + rng.uniform(0, 0.5) * direction / np.linalg.norm(direction) * radii
    tiny = rng.random() < 0.15
    t_radii = rng.uniform(0.3, 0.55) * (0.3 if tiny else 1.0) * rng.uniform(0.8, 1.2, 3) * radii
    dist = _ellipsoid_distance(shape, t_centre, np.maximum(t_radii, 1.5))
    dist += 0.12 * _smooth_noise(shape, rng, 4)
    core = rng.uniform(0.45, 0.7)
    necrotic = core * rng.uniform(0.45, 0.8)
    label = np.zeros(shape, np.uint8)
    label[dist <= 1] = TUMOUR_LABELS["edema"]
    label[dist <= core] = TUMOUR_LABELS["enhancing" if rng.random() >= 0.2 else "necrosis"]
    label[dist <= necrotic] = TUMOUR_LABELS["necrosis"]
    label[~brain] = 0  # tumour clipped to the brain

    grey = 1 / (1 + np.exp(-2 * _smooth_noise(shape, rng, 6)))  # grey-matter fraction in [0, 1]
    outside = ~brain
    masks = {tissue: label == value for tissue, value in TUMOUR_LABELS.items()}
    modalities = {}
    for m, name in enumerate(MODALITY_ORDER):
        white, grey_value = TISSUE_CONTRAST["white_matter"][m], TISSUE_CONTRAST["grey_matter"][m]
        image = white + (grey_value - white) * grey
        for tissue, mask in masks.items():
            image[mask] = TISSUE_CONTRAST[tissue][m]
        for factor in _bias_field(shape, rng):
            image *= factor
        image += rng.uniform(0.02, 0.05) * rng.standard_normal(shape, dtype=np.float32)
        image *= rng.uniform(300, 1200)
        image[outside] = 0
        modalities[name] = image.astype(np.float32, copy=False)
    return modalities, label


def write_phantom_dataset(
    out: str | os.PathLike, cases: int, seed: int = 0, shape: Sequence[int] = (240, 240, 155)
) -> list[Path]:
    """Write ``cases`` phantoms in BraTS 2018-2021 layout under ``out``; return the case folders."""
    folders = []
    for i in range(cases):
        case_id = f"Phantom_{i:03d}"
        folder = Path(out) / case_id
        folder.mkdir(parents=True, exist_ok=True)
        modalities, label = make_phantom_case(shape, np.random.default_rng([seed, i]))
        for name, image in modalities.items():
            nib.save(nib.Nifti1Image(image, np.eye(4)), folder / f"{case_id}_{BRATS2021_SUFFIXES[name]}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), folder / f"{case_id}_seg.nii.gz")
        folders.append(folder)
    return folders


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m data_prep.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--cases", type=int, default=4, help="number of cases (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=int, nargs=3, default=(240, 240, 155), metavar=("H", "W", "D"))
    args = parser.parse_args(argv)
    folders = write_phantom_dataset(args.out, args.cases, args.seed, args.size)
    print(f"wrote {len(folders)} phantom cases of {'x'.join(map(str, args.size))} voxels to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
