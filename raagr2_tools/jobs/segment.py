"""Segment one case (a folder, four files or one 4D file) with a bundle, without writing a datalist.

Usage::

    python -m raagr2_tools.jobs.segment BUNDLE CASE_DIR --output_dir OUT          # any layout data_prep finds
    python -m raagr2_tools.jobs.segment BUNDLE T1C T1 T2 FLAIR --output_dir OUT   # four files, in this order
    python -m raagr2_tools.jobs.segment BUNDLE CASE_4D.nii.gz --output_dir OUT    # channels last, same order
    raagr2-segment ...                                                           # the same, once installed

It runs the bundle's own ``configs/inference.json`` through ``python -m monai.bundle run inference``, so the
outputs are those of ``run inference`` (``OUT/<case_id>_pred.nii.gz``, ``skipped_cases.json``). Files are passed
as the bundle key ``case_images`` (what a packaged bundle takes without this repository); a folder is searched
with :mod:`data_prep.prepare` (every layout it knows, every case it finds, each checked) into a datalist in a
temporary folder. ``--case_id`` names a case given as files; ``--set KEY=VALUE`` overrides any other bundle key
(e.g. ``--set backend=onnxruntime``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .bundle_cli import run_bundle

__all__ = ["main", "segment"]


def segment(
    bundle: str | Path,
    inputs: Sequence[str | Path],
    output_dir: str | Path,
    case_id: str | None = None,
    overrides: dict[str, str] | None = None,
) -> Path:
    """Run the bundle's inference on ``inputs`` (one case folder, or one case's files); returns ``output_dir``.

    Raises:
        ValueError: ``inputs`` mixes a folder with files, or ``case_id`` is given with a folder.
        RuntimeError: the bundle run failed (its last error line ends the message).
    """
    bundle, output_dir = Path(bundle).resolve(), Path(output_dir).resolve()
    paths = [Path(p).resolve() for p in inputs]
    config = bundle / "configs" / "inference.json"
    if not config.is_file():
        raise ValueError(f"{config} not found: {bundle} is not a bundle folder")
    keys: dict[str, str] = {"bundle_root": str(bundle), "output_dir": str(output_dir), **(overrides or {})}
    folders = [p for p in paths if p.is_dir()]
    if folders and len(paths) > 1:
        raise ValueError(f"{folders[0]}: give one case folder, or the files of one case, not both")
    with tempfile.TemporaryDirectory(prefix="raagr2_segment_") as tmp:
        if folders:
            if case_id is not None:
                raise ValueError(f"{folders[0]}: --case_id names a case given as files; a folder's cases keep theirs")
            from data_prep.prepare import prepare_datalist

            datalist = Path(tmp) / "datalist.json"
            prepare_datalist(folders[0], datalist, all_test=True)
            keys.update({"dataset_dir": str(folders[0]), "data_list_file_path": str(datalist)})
        else:
            keys["case_images"] = str([str(p) for p in paths])
            keys["dataset_dir"] = str(Path.cwd())
            if case_id is not None:
                keys["case_id"] = case_id
        run_bundle([config], "inference", keys)
    return output_dir


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected KEY=VALUE")
    return key, value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raagr2_tools.jobs.segment", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, help="the bundle folder (or an unzipped packaged bundle)")
    parser.add_argument("inputs", nargs="+", type=Path, help="a case folder, or T1c T1 T2 FLAIR files, or one 4D file")
    parser.add_argument("--output_dir", type=Path, required=True, help="where <case_id>_pred.nii.gz goes")
    parser.add_argument("--case_id", default=None, help="the case id of a case given as files (the output's name)")
    parser.add_argument("--set", dest="overrides", action="append", type=_key_value, default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        out = segment(args.bundle, args.inputs, args.output_dir, args.case_id, dict(args.overrides))
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"label maps in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
