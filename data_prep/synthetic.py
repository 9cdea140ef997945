"""Synthetic BraTS-like phantoms for smoke tests and quick training runs.

Usage::

    python -m data_prep.synthetic --out DIR --cases N --seed S [--size H W D]

Writes ``DIR/Phantom_###/Phantom_###_{t1ce,t1,t2,flair,seg}.nii.gz`` (BraTS 2018-2021 layout,
float32 images, uint8 labels 0/1/2/4, 1 mm identity affine). The phantoms are meant to be hard enough that a
network has to learn something (a single intensity threshold does not segment them):

- anatomy: an ellipsoidal brain (background exactly 0, brain voxels > 0) of white/grey matter mixed by a
  multi-scale random field, with CSF (two ventricles and patchy sulcal CSF near the surface) that is bright on
  T2 like edema but dark on FLAIR;
- tumour: one lobulated lesion (union of a body and 1-4 offset lobes, its surface displaced by multi-scale
  noise), in 1 of 4 cases a second smaller one; log-uniform sizes from a few voxels to a large part of the
  brain. Edema (2) surrounds a non-concentric core; about 1 in 5 cores is all NCR (1, no ET), about 1 in 7 all
  ET (4), the rest an NCR centre in an ET rim of varied thickness with NCR gaps;
- contrast: :data:`TISSUE_CONTRAST` means, jittered per case and modality. Edema contrast fades towards grey
  matter at the lesion border and its strength varies per case and modality, so edema and healthy tissue
  overlap on every modality; on T1c the ET enhancement and the NCR darkness vary per case;
- texture: independent multi-scale smooth noise within healthy tissue, CSF and each tumour sub-region;
- acquisition: Gaussian blur (partial volume at every boundary), a strong smooth bias field (separable cosines
  of +-25-45 % plus a non-separable part), Gaussian noise and a random global scale per modality.

Case ``i`` is generated from ``numpy.random.default_rng([seed, i])``, so it does not depend on ``--cases``.

``DIR`` must be new, empty, or a phantom folder written before with the same ``--seed`` and ``--size``:
:data:`MANIFEST` (written first) marks it and lists every file synthetic wrote there, and synthetic never
writes over a file it does not list, nor into a folder that holds other files without it. Every file is
written atomically (a full disk leaves the old file as it was). A failed run ends its stderr with one line
``error: <path or option>: <problem>`` and exits 1.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from custom_modules.constants import MODALITY_ORDER
from custom_modules.files import write_json
from data_prep.outputs import report_error, save_nifti, write_error

#: the file that marks a folder of phantoms and lists what synthetic wrote there (written before the phantoms)
MANIFEST = "phantoms.json"
WRITTEN_BY = "data_prep.synthetic"
#: smallest --size per axis (smaller volumes have no brain)
MIN_SIZE = 4

#: BraTS 2018-2021 file suffix of each modality.
BRATS2021_SUFFIXES: dict[str, str] = {"t1c": "t1ce", "t1": "t1", "t2": "t2", "flair": "flair"}

#: Typical mean intensity (before per-case jitter, texture, bias and scale) per tissue, columns in MODALITY_ORDER
#: (t1c, t1, t2, flair). The tumour values are where a sub-region's contrast is strongest; each case draws how
#: much of it it shows (edema fades towards grey matter at its border, NCR/ET contrast on T1c varies).
TISSUE_CONTRAST: dict[str, tuple[float, float, float, float]] = {
    "white_matter": (0.50, 0.55, 0.32, 0.38),
    "grey_matter": (0.42, 0.44, 0.46, 0.46),
    "csf": (0.18, 0.16, 0.90, 0.14),  # ventricles and sulci: bright T2, dark FLAIR (a T2 confounder)
    "edema": (0.44, 0.38, 0.72, 0.72),  # label 2: bright T2/FLAIR, about grey matter on T1c/T1
    "necrosis": (0.20, 0.28, 0.80, 0.56),  # label 1: dark T1c, bright T2
    "enhancing": (0.85, 0.36, 0.58, 0.64),  # label 4: bright T1c
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


def _texture(shape: Sequence[int], rng: np.random.Generator, cells: Sequence[int] = (2, 4, 8, 16)) -> np.ndarray:
    """Multi-scale texture: the sum of :func:`_smooth_noise` fields of ``cells`` spacings (finer ones weaker),
    normalised to unit standard deviation."""
    weights = np.sqrt(np.asarray(cells, dtype=np.float32))
    field = sum(w * _smooth_noise(shape, rng, c) for w, c in zip(weights, cells))
    return (field / max(float(field.std()), 1e-6)).astype(np.float32)


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


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (``sigma`` in voxels, edges replicated): the partial-volume point-spread."""
    radius = max(1, int(np.ceil(2.5 * sigma)))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1, dtype=np.float32) / sigma) ** 2)
    kernel /= kernel.sum()
    for axis in range(image.ndim):
        padded = np.pad(image, [(radius, radius) if a == axis else (0, 0) for a in range(image.ndim)], mode="edge")
        image = sum(
            k * np.take(padded, np.arange(j, j + image.shape[axis]), axis) for j, k in enumerate(kernel.tolist())
        )
    return image.astype(np.float32, copy=False)


def _lesion_distance(
    shape: Sequence[int], rng: np.random.Generator, centre: np.ndarray, radii: np.ndarray
) -> np.ndarray:
    """Lobulated blob around ``centre``: the union (minimum distance) of a body ellipsoid of ``radii`` and 1-4
    offset lobes, its surface displaced by multi-scale noise; <= 1 inside."""
    radii = np.maximum(radii, 1.5)
    dist = _ellipsoid_distance(shape, centre, radii)
    for _ in range(rng.integers(1, 5)):
        direction = rng.standard_normal(3)
        offset = rng.uniform(0.4, 0.9) * direction / np.linalg.norm(direction) * radii
        lobe = np.maximum(rng.uniform(0.35, 0.75, 3) * radii, 1.2)
        dist = np.minimum(dist, _ellipsoid_distance(shape, centre + offset, lobe))
    return dist + rng.uniform(0.12, 0.3) * _texture(shape, rng, (2, 4, 8))


def _tumour_label(shape: Sequence[int], rng: np.random.Generator, centre: np.ndarray, radii: np.ndarray):
    """Label map of one lesion (edema, then a non-concentric core of NCR and a patchy ET rim) and the normalised
    edema depth ``t`` (0 at the core, 1 at the lesion border) used to fade the edema contrast."""
    edema = _lesion_distance(shape, rng, centre, radii)
    core_size = rng.uniform(0.5, 0.85)
    core_dist = _lesion_distance(shape, rng, centre + rng.uniform(-0.2, 0.2, 3) * radii, core_size * radii)
    label = np.zeros(shape, np.uint8)
    label[edema <= 1] = TUMOUR_LABELS["edema"]
    core = core_dist <= 1
    kind = rng.random()
    if kind < 0.2:  # no ET: the core is all NCR
        label[core] = TUMOUR_LABELS["necrosis"]
    elif kind < 0.35:  # solid enhancing core, no necrosis
        label[core] = TUMOUR_LABELS["enhancing"]
    else:  # NCR centre inside an ET rim of varied thickness, with gaps of NCR
        rim = rng.uniform(0.3, 0.7)
        label[core] = TUMOUR_LABELS["enhancing"]
        gaps = _smooth_noise(shape, rng, 3) < rng.uniform(-1.5, -0.5)
        label[core & ((core_dist <= rim) | gaps)] = TUMOUR_LABELS["necrosis"]
    depth = np.clip((edema - 0.5) / 0.5, 0, 1) * (label == TUMOUR_LABELS["edema"])
    return label, depth


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
    shell = _ellipsoid_distance(shape, centre, radii) + 0.04 * _smooth_noise(shape, rng, 16)
    brain = shell <= 1

    # CSF: two ventricles beside the centre and sulcal CSF in the outer shell of the brain
    csf = np.zeros(shape, bool)
    for side in (-1, 1):
        offset = np.array([side * rng.uniform(0.12, 0.2), rng.uniform(-0.1, 0.1), 0.0]) * radii
        csf |= (
            _ellipsoid_distance(shape, centre + offset, rng.uniform([0.06, 0.2, 0.12], [0.1, 0.35, 0.25]) * radii) <= 1
        )
    csf |= (shell > rng.uniform(0.8, 0.88)) & (_smooth_noise(shape, rng, 3) > rng.uniform(0.2, 0.8))

    # tumour: one lesion (sometimes a second, smaller one) of log-uniform size, clipped to the brain
    label = np.zeros(shape, np.uint8)
    depth = np.zeros(shape, np.float32)
    for lesion in range(2 if rng.random() < 0.25 else 1):
        direction = rng.standard_normal(3)
        t_centre = centre + rng.uniform(0.1, 0.55) * direction / np.linalg.norm(direction) * radii
        scale = np.exp(rng.uniform(np.log(0.15), np.log(0.55))) * (0.6 if lesion else 1.0)
        t_label, t_depth = _tumour_label(shape, rng, t_centre, scale * rng.uniform(0.75, 1.25, 3) * radii)
        new = (t_label > 0) & (label == 0)
        label[new], depth[new] = t_label[new], t_depth[new]
        core = np.isin(t_label, (1, 4))
        label[core] = t_label[core]  # an overlapping second core wins over the first edema
    if not label.any():  # at least the lesion centre (very small volumes)
        label[tuple(np.clip(np.round(t_centre).astype(int), 0, size.astype(int) - 1))] = TUMOUR_LABELS["edema"]
    label[~brain] = 0
    csf &= label == 0

    # per-case contrasts: jittered tissue means, edema that fades into grey matter, varying NCR/ET contrast
    means = {t: np.asarray(v, np.float32) * rng.uniform(0.9, 1.1, 4) for t, v in TISSUE_CONTRAST.items()}
    grey_value = means["grey_matter"]
    edema_strength = rng.uniform(0.6, 1.0, 4) * np.array([1.0, 1.0, 1.0, rng.uniform(0.6, 1.0)])
    white_t1c = means["white_matter"][0]  # T1c: ET enhancement and NCR darkness vary per case
    means["enhancing"][0] = white_t1c + rng.uniform(0.35, 1.0) * (means["enhancing"][0] - white_t1c)
    means["necrosis"][0] = white_t1c + rng.uniform(0.5, 1.0) * (means["necrosis"][0] - white_t1c)
    grey = 1 / (1 + np.exp(-2 * _texture(shape, rng, (3, 6, 12))))  # grey-matter fraction in [0, 1]
    fade = (1 - depth) ** rng.uniform(0.7, 2.0)  # 1 next to the core, 0 at the edema border
    masks = {"csf": csf, **{tissue: label == value for tissue, value in TUMOUR_LABELS.items()}}
    textures = {t: _texture(shape, rng) for t in ("healthy", *masks)}
    roughness = rng.uniform(0.04, 0.08)
    modalities = {}
    for m, name in enumerate(MODALITY_ORDER):
        white = means["white_matter"][m]
        image = (white + (grey_value[m] - white) * grey) * (1 + roughness * textures["healthy"])
        for tissue, mask in masks.items():
            value = means[tissue][m]
            if tissue == "edema":
                border = grey_value[m] + (value - grey_value[m]) * edema_strength[m] * 0.5
                value = border + (grey_value[m] + (value - grey_value[m]) * edema_strength[m] - border) * fade[mask]
            image[mask] = value * (1 + 1.5 * roughness * textures[tissue][mask])
        image = _blur(image, rng.uniform(0.6, 1.1))  # partial volume at every boundary
        for factor in _bias_field(shape, rng, rng.uniform(0.25, 0.45)):
            image *= factor
        image *= np.exp(0.08 * _smooth_noise(shape, rng, 24))  # non-separable part of the bias field
        image += rng.uniform(0.02, 0.045) * rng.standard_normal(shape, dtype=np.float32)
        image = np.maximum(image, 0.01) * rng.uniform(300, 1200)
        image[~brain] = 0
        modalities[name] = image.astype(np.float32, copy=False)
    return modalities, label


def phantom_files(cases: int) -> dict[str, list[str]]:
    """``{case_id: [file paths relative to the output folder]}`` of the first ``cases`` phantoms."""
    names = [*BRATS2021_SUFFIXES.values(), "seg"]
    return {
        case_id: [f"{case_id}/{case_id}_{name}.nii.gz" for name in names]
        for case_id in (f"Phantom_{i:03d}" for i in range(cases))
    }


def _size_text(shape: object) -> str:
    """``HxWxD`` of a shape (as it is, if it is not a sequence)."""
    return "x".join(map(str, shape)) if isinstance(shape, (list, tuple)) else str(shape)


def _read_manifest(out: Path) -> dict:
    """The :data:`MANIFEST` of ``out``, checked to be synthetic's.

    Raises:
        FileExistsError: naming the manifest when it is not one synthetic wrote.
    """
    path = out / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FileExistsError(
            errno.EEXIST,
            f"not a manifest written by {WRITTEN_BY} ({type(e).__name__}); the folder is left alone",
            str(path),
        ) from e
    ours = isinstance(manifest, dict) and manifest.get("written_by") == WRITTEN_BY
    files = manifest.get("files") if ours else None
    if not (isinstance(files, list) and all(isinstance(f, str) for f in files)):
        raise FileExistsError(
            errno.EEXIST, f"not a manifest written by {WRITTEN_BY}; the folder is left alone", str(path)
        )
    return manifest


def check_phantom_folder(out: Path, seed: int, shape: Sequence[int], files: Sequence[str]) -> dict | None:
    """Refuse to write the phantom ``files`` into ``out`` unless it is new, empty, or a phantom folder of the
    same ``seed`` and ``shape`` in whose :data:`MANIFEST` every existing one of ``files`` is listed.
    Returns the old manifest (``None`` if there is none).

    Raises:
        FileExistsError, NotADirectoryError: naming ``out`` (or the file) and the problem.
    """
    if not os.path.lexists(out):
        return None
    if not out.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder; no phantom written", str(out))
    if not os.path.lexists(out / MANIFEST):
        entries = sorted(os.listdir(out))
        if not entries:
            return None
        raise FileExistsError(
            errno.EEXIST,
            f"holds {len(entries)} {'entry' if len(entries) == 1 else 'entries'} not written by {WRITTEN_BY} "
            f"(no {MANIFEST}; e.g. {entries[0]}); "
            "no phantom written: choose a new or empty folder",
            str(out),
        )
    manifest = _read_manifest(out)
    settings = {"seed": int(seed), "shape": [int(s) for s in shape]}
    old = {k: manifest.get(k) for k in settings}
    if old != settings:
        raise FileExistsError(
            errno.EEXIST,
            f"holds phantoms of seed {old['seed']}, size {_size_text(old['shape'])}, not of seed {seed}, size "
            f"{_size_text(shape)}; no phantom written: choose a new or empty folder",
            str(out),
        )
    ours = set(manifest["files"])
    for rel in files:
        if os.path.lexists(out / rel) and rel not in ours:
            raise FileExistsError(
                errno.EEXIST, f"not written by {WRITTEN_BY} (not in {MANIFEST}); no phantom written", str(out / rel)
            )
    return manifest


def write_phantom_dataset(
    out: str | os.PathLike, cases: int, seed: int = 0, shape: Sequence[int] = (240, 240, 155)
) -> list[Path]:
    """Write ``cases`` phantoms in BraTS 2018-2021 layout under ``out``; return the case folders.

    ``out`` must be new, empty, or a phantom folder of the same ``seed`` and ``shape``
    (:func:`check_phantom_folder`); :data:`MANIFEST` is written first, then each file, all atomically.

    Raises:
        FileExistsError, NotADirectoryError: ``out`` holds files synthetic did not write (nothing written).
        OSError: a file cannot be written (naming it).
    """
    out = Path(out)
    shape = tuple(int(s) for s in shape)
    plan = phantom_files(cases)
    files = [rel for rels in plan.values() for rel in rels]
    old = check_phantom_folder(out, seed, shape, files)
    listed = sorted(set(old["files"] if old else ()) | set(files))
    manifest = {
        "written_by": WRITTEN_BY,
        "description": "synthetic BraTS-like phantoms (BraTS 2018-2021 layout); files lists every file written",
        "seed": seed,
        "shape": list(shape),
        "cases": len({rel.split("/")[0] for rel in listed}),
        "files": listed,
    }
    try:
        write_json(out / MANIFEST, manifest, indent=2)
    except OSError as e:
        raise write_error(e, out / MANIFEST, "cannot write the phantom manifest") from e
    folders = []
    for i, (case_id, rels) in enumerate(plan.items()):
        folder = out / case_id
        modalities, label = make_phantom_case(shape, np.random.default_rng([seed, i]))
        images = [modalities[name] for name in BRATS2021_SUFFIXES]
        for rel, data in zip(rels, [*images, label]):
            save_nifti(nib.Nifti1Image(data, np.eye(4)), out / rel)
        folders.append(folder)
    return folders


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit code (1 after the line ``error: <path>: <problem>`` on stderr)."""
    parser = argparse.ArgumentParser(prog="python -m data_prep.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help=f"output folder (new, empty, or phantoms with its {MANIFEST})")
    parser.add_argument("--cases", type=int, default=4, help="number of cases (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=int, nargs=3, default=(240, 240, 155), metavar=("H", "W", "D"))
    args = parser.parse_args(argv)
    if args.cases < 1:
        parser.error(f"--cases: must be at least 1, got {args.cases}")
    if min(args.size) < MIN_SIZE:
        parser.error(f"--size: every size must be at least {MIN_SIZE} voxels, got {' '.join(map(str, args.size))}")
    try:
        folders = write_phantom_dataset(args.out, args.cases, args.seed, args.size)
    except (OSError, ValueError) as e:
        return report_error(e)
    except Exception as e:
        return report_error(e, expected=False)
    print(f"wrote {len(folders)} phantom cases of {'x'.join(map(str, args.size))} voxels to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
