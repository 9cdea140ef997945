"""Build a MONAI datalist (JSON) from a folder of BraTS-style cases.

Usage::

    python -m data_prep.prepare --src DIR --out DATALIST.json [--val 0.15 --test 0.15 --seed 0] [--all-test]
                                [--patients CASES.csv]

Cases of every layout in :mod:`data_prep.layouts` are found, checked with
:func:`data_prep.validation.inspect_case` (a bad case is skipped with one ``SKIP`` line) and split
by patient with :func:`data_prep.split.split_by_patient`: each case's patient id comes from the layout's
rule in :mod:`data_prep.patients` (UPENN scan suffix, BraTS 2023 timepoint suffix, else the case id) or
from ``--patients`` (a ``case_id,patient_id`` CSV, which wins for the cases it lists). The JSON has a
small header (``description``, ``split_unit``, ``patient_ids_from``, ``dataset_dir``, ``modality_order``,
``labels``, ``seed``, fractions) and the lists ``training``, ``validation``, ``test`` of entries::

    {"case_id": str, "patient_id": str, "layout": str,
     "image": [t1c, t1, t2, flair] paths | one 4D path, "label": path}

With ``--all-test`` (segmenting new scans) a case whose label file does not exist is kept and its
entry has no ``"label"`` key (MONAI inference reads only ``"image"``); without it, it is skipped.

Conventions, the same for every layout, so one MONAI pipeline reads them all:

- **Channel order** is :data:`data_prep.layouts.MODALITY_ORDER` = T1c, T1, T2, FLAIR (as MONAI's
  model-zoo ``brats_mri_segmentation``): the four 3D paths are listed in that order; an MSD 4D
  image (stored FLAIR, T1w, T1gd, T2w) is re-ordered and written to
  ``<out_dir>/images/<case>.nii.gz`` (channels last, T1c, T1, T2, FLAIR; same dtype, affine, header).
- **Labels** are always BraTS 0/1/2/4 on disk (``ConvertToMultiChannelBasedOnBratsClassesd``
  hard-codes ET = 4). Layouts with another convention (BraTS 2023: 3 -> 4; MSD: 1, 2, 3 ->
  2, 1, 4) get a converted copy ``<out_dir>/labels/<case>_seg.nii.gz`` (uint8, same affine
  and header), see :func:`data_prep.labels.remap_labels`. Source files are never modified.
- **Paths** are relative to ``--src`` (``dataset_dir`` in the header; pass it as
  ``base_dir`` to ``monai.data.load_decathlon_datalist``) when they lie under it, absolute otherwise.

``<out_dir>`` is the folder of ``--out``; its ``images/`` and ``labels/`` are excluded from the search.

Nothing prepare reads is written over: ``--out`` must end in ``.json``, must not be a file found under
``--src``, and if it exists must be a datalist written by prepare (:func:`is_prepare_datalist`); the
converted copies and the datalist are written atomically (a full disk leaves the old files as they were) and
never in place of an input file. Two cases with one case id (letter case ignored: their predictions, named
by case id, would overwrite each other) are not both listed: the first found (sorted by path) is the only one
that can be kept, the others are skipped naming both. A failed run ends its stderr with one
line ``error: <path or option>: <problem>`` and exits 1.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from custom_modules.files import write_json
from data_prep.labels import BRATS_LABELS, remap_labels
from data_prep.layouts import MODALITY_ORDER, Case, cases_of, list_nifti
from data_prep.outputs import error_line, report_error, save_nifti, write_error
from data_prep.patients import assign_patients, read_patient_csv
from data_prep.split import SPLITS, split_by_patient, split_counts
from data_prep.validation import Loaded, fault_kind, inspect_case

logger = logging.getLogger("data_prep.prepare")  # not __name__: "__main__" under python -m
GENERATED_DIRS: tuple[str, ...] = ("images", "labels")


def _rel(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` if it lies under it, else absolute (POSIX separators; links kept)."""
    path = Path(os.path.abspath(path))
    return (path.relative_to(base) if path.is_relative_to(base) else path).as_posix()


#: what every datalist prepare writes has (every version): the text in ``description`` and the keys
DATALIST_MARK = "written by data_prep.prepare"
DATALIST_KEYS: tuple[str, ...] = ("description", "dataset_dir", "modality_order", *SPLITS)


class OutputError(OSError):
    """An output of prepare (the datalist, a converted copy) cannot or must not be written: the run stops."""


@dataclass
class InputFiles:
    """The files prepare reads (every NIfTI file under ``--src``, every file of a found case), by real path
    and by inode (a hard link is the same file): prepare writes over none of them."""

    paths: dict[str, str] = field(default_factory=dict)  # real path -> what the file is
    inodes: dict[tuple[int, int], str] = field(default_factory=dict)

    @classmethod
    def of(cls, files: Iterable[Path], cases: Iterable[Case]) -> InputFiles:
        inputs = cls()
        for path in files:
            inputs.add(path, "a NIfTI file under --src")
        for case in cases:
            for path in case.files:
                what = "the label" if path == case.label else "an image"
                inputs.add(path, f"{what} of case {case.case_id} ({path})")
        return inputs

    def add(self, path: Path, what: str) -> None:
        self.paths[os.path.realpath(path)] = what
        try:
            st = os.stat(path)
        except OSError:
            return  # an expected file that does not exist: only its path is protected
        self.inodes[(st.st_dev, st.st_ino)] = what

    def find(self, path: Path) -> str | None:
        """What input file ``path`` is (following links, hard links included); ``None`` if none."""
        what = self.paths.get(os.path.realpath(path))
        if what is not None:
            return what
        try:
            st = os.stat(path)
        except OSError:
            return None
        return self.inodes.get((st.st_dev, st.st_ino))


def _save_like(
    data: np.ndarray,
    like: nib.Nifti1Image,
    path: Path,
    dtype: np.dtype | None = None,
    inputs: InputFiles | None = None,
) -> None:
    """Write ``data`` with the affine and header of ``like`` atomically (:func:`data_prep.outputs.save_nifti`),
    never in place of one of the ``inputs``.

    Raises:
        OutputError: ``path`` is an input file, or it cannot be written (full disk, no permission).
    """
    what = inputs.find(path) if inputs is not None else None
    if what is not None:
        raise OutputError(
            errno.EEXIST,
            f"a converted copy would replace {what}; not written (give --out a folder outside the data)",
            str(path),
        )
    header = like.header.copy()
    if dtype is not None:
        header.set_data_dtype(dtype)
        data = data.astype(dtype)
    try:
        save_nifti(nib.Nifti1Image(data, like.affine, header), path)
    except OSError as e:
        raise write_error(e.__cause__ or e, path, "cannot write a converted copy", OutputError) from e


def make_entry(
    case: Case, loaded: dict[str, Loaded], src: Path, out_dir: Path, inputs: InputFiles | None = None
) -> dict:
    """Datalist entry of a validated case; writes re-ordered 4D images and converted labels (never in place of
    one of the ``inputs``).

    The entry has no ``"label"`` if ``loaded`` has none (unlabelled case, ``--all-test`` only).
    """
    if case.image_4d is not None:
        img, data = loaded["image"]
        order = [case.channels_4d.index(m) for m in MODALITY_ORDER]
        image_path = out_dir / "images" / f"{case.case_id}.nii.gz"
        _save_like(data[..., order], img, image_path, inputs=inputs)
        image: str | list[str] = _rel(image_path, src)
    else:
        image = [_rel(case.images[m], src) for m in MODALITY_ORDER]
    entry = {"case_id": case.case_id, "layout": case.layout, "image": image}
    if "label" not in loaded:
        return entry
    label_path = case.label
    if case.label_convention != "brats":
        img, data = loaded["label"]
        label_path = out_dir / "labels" / f"{case.case_id}_seg.nii.gz"
        _save_like(remap_labels(data, case.label_convention), img, label_path, np.dtype(np.uint8), inputs)
    return {**entry, "label": _rel(label_path, src)}


def is_prepare_datalist(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a datalist written by prepare: a JSON object with :data:`DATALIST_KEYS` whose
    ``description`` says :data:`DATALIST_MARK`."""
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(content, dict)
        and all(k in content for k in DATALIST_KEYS)
        and DATALIST_MARK in str(content["description"])
        and all(isinstance(content[k], list) for k in SPLITS)
    )


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that prepare must not write: a name not ending in ``.json``, a folder, an existing
    file that is not a datalist prepare wrote, or a path below a file or a folder it cannot write to.

    Raises:
        ValueError: naming ``out`` and the problem.
    """
    if out.suffix.lower() != ".json":
        raise ValueError(f"{out}: --out must name the datalist file to write, ending in .json")
    if out.is_dir():
        raise ValueError(f"{out}: --out is a folder; name the datalist file in it (e.g. {out / 'datalist.json'})")
    if os.path.lexists(out) and not is_prepare_datalist(out):
        raise ValueError(
            f"{out}: --out exists and is not a datalist written by data_prep.prepare; "
            "not overwritten (remove it or choose another --out)"
        )
    folder = out.parent
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent  # the folder that will hold the datalist's new folders
    if not folder.is_dir():
        raise ValueError(f"{out}: --out lies below {folder}, which is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{out}: --out folder {folder} is not writable")


def prepare_datalist(
    src: str | os.PathLike,
    out: str | os.PathLike,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    all_test: bool = False,
    patients_csv: str | os.PathLike | None = None,
) -> dict:
    """Find, validate and split the cases under ``src``; write and return the datalist ``out``.

    With ``all_test`` every case goes to ``test`` and a case without a label file is kept (its
    entry has no ``"label"``); otherwise a missing label skips the case. ``patients_csv`` maps case ids
    to patient ids (see :func:`data_prep.patients.read_patient_csv`).

    Raises:
        FileNotFoundError: ``src`` does not exist (``NotADirectoryError``: it is a file).
        ValueError: invalid fractions, a bad ``patients_csv``, or an ``out`` that must not be written
            (:func:`check_out`).
        RuntimeError: no case could be kept (nothing written).
        OutputError: a converted copy or the datalist cannot be written (an old datalist is left as it was).
    """
    src, out = Path(os.path.abspath(src)), Path(os.path.abspath(out))
    if not src.exists():
        raise FileNotFoundError(errno.ENOENT, "source folder (--src) does not exist", str(src))
    if not src.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "--src is a file, not a folder of cases", str(src))
    out_dir = out.parent
    files = list_nifti(src, exclude=[out_dir / d for d in GENERATED_DIRS])
    cases = cases_of(files)
    inputs = InputFiles.of(files, cases)
    what = inputs.find(out)
    if what is not None:  # also through a link or a hard link
        raise ValueError(f"{out}: --out is {what}; prepare never writes over an input")
    check_out(out)
    try:  # check the fractions and the CSV before the slow part
        split_counts(0, val_fraction, test_fraction)
    except ValueError as e:
        raise ValueError(f"--val/--test: {e}") from e
    overrides = read_patient_csv(patients_csv) if patients_csv else {}
    entries: dict[str, dict] = {}
    first: dict[str, Case] = {}  # case id (letter case ignored) -> the first case found with it
    skipped: list[list[str]] = []
    for case in cases:
        other = first.setdefault(case.case_id.casefold(), case)
        if other is not case:
            problems = [
                f"{case.source}: duplicate case id {case.case_id} (case {other.case_id} found first at "
                f"{other.source}, {'kept' if other.case_id in entries else 'skipped'}; "
                "one id per scan, or their predictions overwrite each other)"
            ]
        else:
            try:
                problems, loaded = inspect_case(case, label_required=not all_test)
                if not problems:
                    entries[case.case_id] = make_entry(case, loaded, src, out_dir, inputs)
            except OutputError:  # not the case's fault: a full disk or a bad --out stops the run
                raise
            except Exception as e:  # one odd case must not stop the run
                problems = [f"{case.source}: unexpected error ({type(e).__name__}: {e})"]
        if problems:
            logger.warning("SKIP %s: %s", case.case_id, "; ".join(problems))
            skipped.append(problems)

    layouts = Counter(c.layout for c in cases)
    reasons = Counter(fault_kind(p[0]) for p in skipped)
    unlabelled = sum("label" not in e for e in entries.values())
    logger.info(
        "found %d cases (%s), kept %d%s, skipped %d%s",
        len(cases),
        ", ".join(f"{k}: {v}" for k, v in sorted(layouts.items())) or "no known layout",
        len(entries),
        f" ({unlabelled} without label: test only)" if unlabelled else "",
        len(skipped),
        f" ({', '.join(f'{k}: {v}' for k, v in reasons.most_common())})" if reasons else "",
    )
    if not entries:
        why = f"all {len(cases)} cases were skipped (reasons above)" if cases else "no case of a known layout found"
        raise RuntimeError(f"no usable case under {src}: {why}; nothing written")
    case_patients = assign_patients({cid: e["layout"] for cid, e in entries.items()}, overrides)
    for cid, entry in entries.items():
        entries[cid] = {"case_id": cid, "patient_id": case_patients[cid], **entry}
    split = split_by_patient(case_patients, val_fraction, test_fraction, seed, all_test)
    n_patients = len(set(case_patients.values()))
    if n_patients < 3 and not all_test:
        logger.info(
            "note: only %d patient(s), small-dataset rule of data_prep.split applied "
            "(1 patient: test only; 2 patients: 1 training + 1 test)",
            n_patients,
        )
    datalist = {
        "description": (
            "BraTS-style brain tumour datalist written by data_prep.prepare; split by patient "
            "(all scans of a patient in one list; each entry names its patient_id)"
        ),
        "split_unit": "patient",
        "patient_ids_from": (
            f"{Path(patients_csv).as_posix()}, else the layout rules of data_prep.patients"
            if patients_csv
            else "the layout rules of data_prep.patients"
        ),
        "dataset_dir": src.as_posix(),
        "modality_order": list(MODALITY_ORDER),
        "labels": {str(k): v for k, v in BRATS_LABELS.items()},
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        **{name: [entries[cid] for cid in split[name]] for name in SPLITS},
    }
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, datalist, indent=2)
    except OSError as e:
        raise write_error(e, out, "cannot write the datalist", OutputError) from e
    logger.info(
        "split by patient (%d patients, %d cases): %s",
        n_patients,
        len(entries),
        ", ".join(f"{n}={len(split[n])}" for n in SPLITS),
    )
    logger.info("wrote %s", out)
    return datalist


@dataclass(frozen=True)
class PreparedCase:
    """One case a command reads from a folder: its id, image files (T1c, T1, T2, FLAIR, or one 4D file) and label."""

    case_id: str
    images: list[Path]
    label: Path | None


def prepared_cases(src: str | os.PathLike, cases: Sequence[str] = ()) -> Iterator[PreparedCase]:
    """Every case :func:`prepare_datalist` finds under ``src`` (or only ``cases``), with absolute paths; a case id
    asked for but not found gets one ``SKIP`` line on stderr. Converted copies (layouts whose labels prepare remaps)
    live in a temporary folder that exists while the iteration runs."""
    with tempfile.TemporaryDirectory(prefix="prepared_") as tmp:
        content = prepare_datalist(src, Path(tmp) / "datalist.json", all_test=True)
        base = Path(content.get("dataset_dir", src))

        def resolve(path: str) -> Path:
            return Path(path) if Path(path).is_absolute() else base / path

        entries = [e for e in content["test"] if not cases or e["case_id"] in cases]
        for missing in sorted(set(cases) - {e["case_id"] for e in entries}):
            print(f"SKIP {missing}: not found under {src}", file=sys.stderr)
        for entry in entries:
            images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
            label = resolve(entry["label"]) if entry.get("label") else None
            yield PreparedCase(entry["case_id"], [resolve(f) for f in images], label)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit code (0 if at least one case was kept, else 1 after the line
    ``error: <path or option>: <problem>`` on stderr)."""
    parser = argparse.ArgumentParser(prog="python -m data_prep.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="folder with the cases (any supported layout)")
    parser.add_argument("--out", required=True, help="datalist JSON to write")
    parser.add_argument("--val", type=float, default=0.15, help="validation fraction (default 0.15)")
    parser.add_argument("--test", type=float, default=0.15, help="test fraction (default 0.15)")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    parser.add_argument(
        "--all-test",
        action="store_true",
        help="put every case in 'test' and keep cases without a label file (to segment a folder)",
    )
    parser.add_argument(
        "--patients",
        default=None,
        help="CSV with columns case_id,patient_id; wins over the layout rules for the cases it lists",
    )
    args = parser.parse_args(argv)

    pkg_logger = logging.getLogger("data_prep")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = pkg_logger.level
    pkg_logger.addHandler(handler)
    pkg_logger.setLevel(logging.INFO)
    try:
        prepare_datalist(args.src, args.out, args.val, args.test, args.seed, args.all_test, args.patients)
        return 0
    except (OSError, ValueError, RuntimeError) as e:  # bad input, bad --out, full disk: no traceback
        logger.error("ERROR: %s", error_line(e))
        return report_error(e)
    except Exception as e:
        logger.error("ERROR: %s", error_line(e))
        return report_error(e, expected=False)
    finally:
        pkg_logger.removeHandler(handler)
        pkg_logger.setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
