"""Find BraTS-style cases under a folder, one finder per dataset layout.

Every finder takes the sorted list of NIfTI files under the source folder and returns
:class:`Case` objects. Missing files are kept as the *expected* path (which does not exist),
so that :func:`data_prep.validation.validate_case` can name them (a case whose label does not
exist is still returned: ``prepare --all-test`` keeps it unlabelled). Suffixes are matched
case-sensitively (UPENN-GBM ``_T1`` is not BraTS ``_t1``); ``._*`` files are ignored.

Layouts (``<case>`` is the case id):

- ``brats2021``: BraTS 2018-2021, ``<case>_{t1ce,t1,t2,flair,seg}.nii[.gz]`` in one folder.
- ``brats2023``: ``<case>-{t1c,t1n,t2w,t2f,seg}.nii[.gz]`` (``_`` accepted too), labels 3 = ET.
- ``upenn_gbm``: ``<case>_{T1GD,T1,T2,FLAIR}.nii.gz`` in one folder, label ``<case>_segm``
  (preferred) or ``<case>_automated_approx_segm`` anywhere under the source folder.
- ``brainles``: BrainLes preprocessing output,
  ``<case>/<case>_brainles/raw_bet/<case>_{t1c,t1,t2,fla}_bet.nii.gz`` with the label
  ``<case>/<case>_brainles/fusion/simple.nii.gz``.
- ``msd``: MSD Task01_BrainTumour, ``imagesTr/<case>.nii.gz`` (one 4D file, channels
  FLAIR, T1w, T1gd, T2w in the last dim) with ``labelsTr/<case>.nii.gz`` (1 = edema,
  2 = non-enhancing, 3 = enhancing). ``imagesTs`` (no labels) is ignored.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from custom_modules.constants import MODALITY_ORDER  # channel order of every datalist image

NIFTI_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")


@dataclass
class Case:
    """One patient exam as found on disk.

    ``images`` maps each name of :data:`MODALITY_ORDER` to a 3D file; a 4D layout (MSD) sets
    ``image_4d`` instead, with the file's channel order in ``channels_4d``.
    """

    case_id: str
    layout: str
    images: dict[str, Path] = field(default_factory=dict)
    label: Path | None = None
    label_convention: str = "brats"
    image_4d: Path | None = None
    channels_4d: tuple[str, ...] = ()

    @property
    def source(self) -> Path:
        """A file of the case, to say where it was found."""
        return self.image_4d or next(iter(self.images.values()))

    @property
    def files(self) -> list[Path]:
        """Every file of the case (images, 4D image, label), found or expected."""
        images = [self.image_4d] if self.image_4d is not None else list(self.images.values())
        return images + ([self.label] if self.label is not None else [])


def nifti_stem(path: Path) -> str | None:
    """File name without ``.nii``/``.nii.gz``; ``None`` for other files and ``._*`` resource forks."""
    name = path.name
    if name.startswith("._"):
        return None
    return next((name[: -len(ext)] for ext in NIFTI_EXTENSIONS if name.endswith(ext)), None)


def list_nifti(src: Path, exclude: Iterable[Path] = ()) -> list[Path]:
    """All NIfTI files under ``src`` (following folder links), sorted, skipping the folders in ``exclude``."""
    skip = {Path(p).resolve() for p in exclude}
    files = []
    for root, dirs, names in os.walk(src, followlinks=True):
        dirs[:] = sorted(d for d in dirs if (Path(root) / d).resolve() not in skip)
        files += [Path(root) / n for n in names if nifti_stem(Path(root) / n)]
    return sorted(files)


def _suffix_cases(
    files: Sequence[Path],
    layout: str,
    suffixes: dict[str, str],
    seps: tuple[str, ...],
    label_suffixes: tuple[str, ...],
    convention: str = "brats",
    label_anywhere: bool = False,
    folder_name: str | None = None,
    label_at: Callable[[Path, str], Path] | None = None,
) -> list[Case]:
    """Group ``<case><sep><suffix>`` files by (folder, case id) and attach the label file.

    The label is ``<case><sep><label suffix>`` (first suffix found) in the same folder, or anywhere
    with ``label_anywhere``, or ``label_at(folder, case_id)`` if given. With ``folder_name`` only
    images in folders of that name count.
    """
    groups: dict[tuple[Path, str, str], dict[str, Path]] = defaultdict(dict)  # (folder, case id, sep)
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for f in files:
        stem = nifti_stem(f)
        by_stem[stem].append(f)
        if folder_name and f.parent.name != folder_name:
            continue
        for modality, suffix in suffixes.items():
            for sep in seps:
                end = sep + suffix
                if stem.endswith(end) and len(stem) > len(end):
                    groups[(f.parent, stem[: -len(end)], sep)].setdefault(modality, f)
    cases = []
    for (folder, cid, sep), found in sorted(groups.items()):
        images = {m: found.get(m, folder / f"{cid}{sep}{suffixes[m]}.nii.gz") for m in MODALITY_ORDER}
        if label_at is not None:
            label = label_at(folder, cid)
        else:
            stems = [f"{cid}{sep}{suffix}" for suffix in label_suffixes]
            found_labels = [p for s in stems for p in by_stem.get(s, []) if label_anywhere or p.parent == folder]
            label = found_labels[0] if found_labels else folder / f"{stems[0]}.nii.gz"
        cases.append(Case(cid, layout, images, label, convention))
    return cases


def find_brats2021(files: Sequence[Path]) -> list[Case]:
    """BraTS 2018-2021: ``<case>_{t1ce,t1,t2,flair,seg}``."""
    suffixes = {"t1c": "t1ce", "t1": "t1", "t2": "t2", "flair": "flair"}
    return _suffix_cases(files, "brats2021", suffixes, ("_",), ("seg",))


def find_brats2023(files: Sequence[Path]) -> list[Case]:
    """BraTS 2023: ``<case>-{t1c,t1n,t2w,t2f,seg}`` (or ``_``); labels 0/1/2/3."""
    suffixes = {"t1c": "t1c", "t1": "t1n", "t2": "t2w", "flair": "t2f"}
    return _suffix_cases(files, "brats2023", suffixes, ("-", "_"), ("seg",), convention="brats2023")


def find_upenn_gbm(files: Sequence[Path]) -> list[Case]:
    """UPENN-GBM: ``<case>_{T1GD,T1,T2,FLAIR}``, label ``<case>_segm`` anywhere."""
    suffixes = {"t1c": "T1GD", "t1": "T1", "t2": "T2", "flair": "FLAIR"}
    return _suffix_cases(files, "upenn_gbm", suffixes, ("_",), ("segm", "automated_approx_segm"), label_anywhere=True)


def find_brainles(files: Sequence[Path]) -> list[Case]:
    """BrainLes output: ``raw_bet/<case>_{t1c,t1,t2,fla}_bet`` + ``fusion/simple``."""
    suffixes = {"t1c": "t1c_bet", "t1": "t1_bet", "t2": "t2_bet", "flair": "fla_bet"}
    return _suffix_cases(
        files,
        "brainles",
        suffixes,
        ("_",),
        (),
        folder_name="raw_bet",
        label_at=lambda folder, _: folder.parent / "fusion" / "simple.nii.gz",
    )


def find_msd(files: Sequence[Path]) -> list[Case]:
    """MSD Task01_BrainTumour: 4D ``imagesTr/<case>`` + ``labelsTr/<case>``."""
    cases = []
    for f in files:
        if f.parent.name == "imagesTr":
            label = f.parent.parent / "labelsTr" / f.name
            cases.append(
                Case(
                    nifti_stem(f),
                    "msd",
                    label=label,
                    label_convention="msd",
                    image_4d=f,
                    channels_4d=("flair", "t1", "t1c", "t2"),
                )
            )
    return cases


LAYOUT_FINDERS: tuple[Callable[[Sequence[Path]], list[Case]], ...] = (
    find_brats2021,
    find_brats2023,
    find_upenn_gbm,
    find_brainles,
    find_msd,
)


def cases_of(files: Sequence[Path]) -> list[Case]:
    """All cases of all layouts among ``files`` (from :func:`list_nifti`), sorted by case id."""
    cases = [case for finder in LAYOUT_FINDERS for case in finder(files)]
    return sorted(cases, key=lambda c: (c.case_id, str(c.source)))


def find_cases(src: str | os.PathLike, exclude: Iterable[Path] = ()) -> list[Case]:
    """All cases of all layouts under ``src``, sorted by case id."""
    return cases_of(list_nifti(Path(src), exclude))
