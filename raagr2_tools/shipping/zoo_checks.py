"""The checks the MONAI model-zoo CI (``ci/verify_bundle.py``, full mode) applies to a bundle, run offline.

Each check is a function of the bundle folder and the metadata schema file that raises on failure;
:func:`verify_bundle` runs the chosen ones and returns ``{check name: None if passed else the failure message}``.
Checks that build the network put the bundle folder first on ``sys.path`` for the call, as the zoo CI does, so a
bundle's ``scripts/`` package is importable; ``sys.path`` is restored and ``scripts*`` modules are unloaded after.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

__all__ = ["ZOO_CHECKS", "verify_bundle", "bundle_on_sys_path"]

REQUIRED_FILES = ("configs/metadata.json", "LICENSE", "models/model.pt", "configs/inference.json")
#: the zoo CI hard-codes these
NET_ID = "network_def"
_MAX_MESSAGE = 2000


@contextlib.contextmanager
def bundle_on_sys_path(bundle_dir: str | Path) -> Iterator[None]:
    """``bundle_dir`` at ``sys.path[0]`` inside the block; afterwards the old path and no ``scripts*`` modules."""
    saved = list(sys.path)
    _unload_scripts()
    sys.path.insert(0, str(Path(bundle_dir).resolve()))
    try:
        yield
    finally:
        sys.path[:] = saved
        _unload_scripts()


def _unload_scripts() -> None:
    for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        del sys.modules[name]


def _files(bundle: Path) -> tuple[str, str, str]:
    return str(bundle / "configs" / "metadata.json"), str(bundle / "configs" / "inference.json"), str(bundle)


def check_required_files(bundle: Path, schema: Path) -> None:
    """``configs/metadata.json``, ``LICENSE`` (necessary), ``models/model.pt``, ``configs/inference.json``
    (preferred)."""
    missing = [name for name in REQUIRED_FILES if not (bundle / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{bundle} lacks {missing}")


def check_version_in_changelog(bundle: Path, schema: Path) -> None:
    """Metadata has ``version`` and ``changelog``, and the version is a key of the changelog."""
    meta_file = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    for key in ("version", "changelog"):
        if key not in meta:
            raise ValueError(f"{meta_file} has no '{key}'")
    if not isinstance(meta["changelog"], dict) or meta["version"] not in meta["changelog"]:
        raise ValueError(f"{meta_file}: version {meta['version']!r} is not a key of 'changelog'")


def check_metadata_schema(bundle: Path, schema: Path) -> None:
    """``monai.bundle.verify_metadata`` against the local schema file (no download when it exists)."""
    from monai.bundle import verify_metadata

    if not schema.is_file():
        raise FileNotFoundError(f"schema {schema} not found (the check runs offline and never downloads it)")
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(schema))


def check_net_in_out(bundle: Path, schema: Path) -> None:
    """``monai.bundle.verify_net_in_out``: output channels and dtype of ``network_def`` match the metadata."""
    from monai.bundle import verify_net_in_out

    meta_file, config_file, bundle_root = _files(bundle)
    with bundle_on_sys_path(bundle):
        verify_net_in_out(net_id=NET_ID, meta_file=meta_file, config_file=config_file, bundle_root=bundle_root)


def check_torchscript(bundle: Path, schema: Path) -> None:
    """``monai.bundle.ckpt_export`` of ``models/model.pt`` (into a temp folder) loads; so does ``models/model.ts``."""
    import torch
    from monai.bundle import ckpt_export

    meta_file, config_file, bundle_root = _files(bundle)
    with tempfile.TemporaryDirectory(prefix="verify_torchscript_") as tmp, bundle_on_sys_path(bundle):
        exported = Path(tmp) / "verify_model.ts"
        ckpt_export(
            net_id=NET_ID,
            filepath=str(exported),
            ckpt_file=str(bundle / "models" / "model.pt"),
            meta_file=meta_file,
            config_file=config_file,
            bundle_root=bundle_root,
        )
        torch.jit.load(str(exported), map_location="cpu")
    shipped = bundle / "models" / "model.ts"
    if shipped.is_file():
        try:
            torch.jit.load(str(shipped), map_location="cpu")
        except Exception as e:
            raise ValueError(f"{shipped} does not load with torch.jit.load: {e}") from None


def check_json_format(bundle: Path, schema: Path) -> None:
    """Every ``configs/*.json`` is 4-space indented with its key order (``pretty-format-json --no-sort-keys``)."""
    bad = []
    for path in sorted((bundle / "configs").glob("*.json")):
        text = path.read_text(encoding="utf-8")
        try:
            expected = json.dumps(json.loads(text), indent=4, ensure_ascii=False)
        except json.JSONDecodeError as e:
            bad.append(f"{path.name} (invalid JSON: {e})")
            continue
        if text.rstrip("\n") != expected:
            line = next(
                (i for i, (a, b) in enumerate(zip(text.splitlines(), expected.splitlines()), 1) if a != b),
                min(len(text.splitlines()), len(expected.splitlines())) + 1,
            )
            bad.append(f"{path.name} (first difference at line {line})")
    if bad:
        raise ValueError(f"{bundle}/configs: not 4-space indented JSON with keys in order: {', '.join(bad)}")


def check_infer_properties(bundle: Path, schema: Path) -> None:
    """``ConfigWorkflow(workflow_type="infer")`` initializes and ``check_properties()`` finds nothing missing.

    ``check_properties`` instantiates each property (``dataset`` included, though no image is read), so, as the
    zoo's unit tests override ``dataset_dir``, the check points the bundle at a one-case placeholder datalist in a
    temp folder (the bundle's datalist loader refuses a missing datalist or file) and writes nothing into the bundle.
    """
    from monai.bundle import ConfigWorkflow

    meta_file, config_file, bundle_root = _files(bundle)
    logging_file = bundle / "configs" / "logging.conf"
    with tempfile.TemporaryDirectory(prefix="verify_properties_") as tmp, bundle_on_sys_path(bundle):
        datalist = Path(tmp) / "datalist.json"
        (Path(tmp) / "placeholder.nii.gz").touch()
        case = [{"case_id": "placeholder", "image": ["placeholder.nii.gz"]}]
        datalist.write_text(json.dumps({"training": case, "validation": case, "test": case}))
        workflow = ConfigWorkflow(
            config_file=config_file,
            meta_file=meta_file,
            logging_file=str(logging_file) if logging_file.is_file() else None,
            workflow_type="infer",
            bundle_root=bundle_root,
            dataset_dir=tmp,
            data_list_file_path=str(datalist),
            output_dir=str(Path(tmp) / "out"),
        )
        workflow.initialize()
        missing = workflow.check_properties()
    if missing:
        raise ValueError(f"{config_file}: missing or wrong inference properties {missing}")


#: check name -> check, in the order the zoo CI runs them (plus the JSON format of its pre-commit hook)
ZOO_CHECKS: dict[str, Callable[[Path, Path], None]] = {
    "required_files": check_required_files,
    "version_in_changelog": check_version_in_changelog,
    "metadata_schema": check_metadata_schema,
    "infer_properties": check_infer_properties,
    "net_in_out": check_net_in_out,
    "torchscript": check_torchscript,
    "json_format": check_json_format,
}


def _message(error: BaseException) -> str:
    """The error and its causes (monai wraps the real reason, e.g. in 'Failed to instantiate component')."""
    parts, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        parts.append(" ".join(f"{type(error).__name__}: {error}".split()))
        error = error.__cause__ or error.__context__
    text = "; caused by ".join(parts)
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + " ..."


def verify_bundle(
    bundle_dir: str | Path, schema: str | Path, checks: Sequence[str] | None = None
) -> dict[str, str | None]:
    """Run model-zoo checks on ``bundle_dir``: check name -> None if passed, else the failure message.

    Args:
        bundle_dir: the bundle folder.
        schema: a local copy of the metadata schema (e.g. ``meta_schema_20240725.json``).
        checks: names from :data:`ZOO_CHECKS` (default: all).
    """
    bundle, schema = Path(bundle_dir), Path(schema)
    names = list(ZOO_CHECKS) if checks is None else list(checks)
    unknown = [name for name in names if name not in ZOO_CHECKS]
    if unknown:
        raise ValueError(f"unknown checks {unknown}; choose from {list(ZOO_CHECKS)}")
    if not bundle.is_dir():
        raise FileNotFoundError(f"bundle folder {bundle} not found")
    results: dict[str, str | None] = {}
    for name in names:
        try:
            ZOO_CHECKS[name](bundle, schema)
            results[name] = None
        except (Exception, SystemExit) as e:  # monai's CLI functions raise anything from ValueError to SystemExit
            results[name] = _message(e)
    return results
