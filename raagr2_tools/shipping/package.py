"""Package a bundle as one self-contained zip: its runtime configs, models, docs, and the runtime layer as ``scripts/``.

The zip holds a folder ``<name>/`` (``<name>`` = the bundle folder's name) laid out like a model-zoo bundle::

    <name>/LICENSE  configs/*.json, logging.conf  docs/  models/model.pt (+ exports, backends.json, export report)
    <name>/scripts/  the runtime layer (the ``custom_modules`` package), copied file by file as it is

The runtime layer imports itself only relatively and never imports the tooling (a test walks its import
graph), so it works unchanged under the package name ``scripts``: no Python source is rewritten. Only the
JSON configs (and the configs embedded in ``model.ts``) have their ``custom_modules.`` names replaced by
``scripts.``. The tooling configs (:data:`TOOLING_CONFIGS`: ``export.json``, ``compress.json``) stay behind,
and so does every tooling module: a packaged bundle trains, evaluates and infers; exporting or compressing it
again needs raagr2-slim. Any other config that names the tooling is refused.

Unzipped anywhere, ``python -m monai.bundle run --config_file <name>/configs/inference.json ...`` works on a
machine with only the requirements installed: ``ConfigWorkflow.run()`` puts the bundle folder on ``sys.path``
before the ``run`` expressions instantiate ``scripts.*`` components, and ``bundle_root`` is the component
``{"_target_": "scripts.bundle_root"}``, which returns the unzipped folder wherever it is. Before the zip is
written, a child process that cannot import this repository imports every ``scripts.*`` name the configs use.

Run with ``python -m monai.bundle run package --config_file <bundle>/configs/export.json --bundle_root <bundle>
--output_dir DIR`` or ``python -m raagr2_tools.shipping.package <bundle> --output_dir DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import custom_modules
from custom_modules.artefacts import MANIFEST_NAME, read_manifest, record_artefacts, verify_artefact
from custom_modules.choice import config_bool
from custom_modules.files import json_text
from custom_modules.handlers import load_state_dict_checked, load_weights
from raagr2_tools.authoring.config import bundle_network
from raagr2_tools.authoring.variant import GENERATED_KEY

__all__ = [
    "BundlePackager",
    "PackagingError",
    "RUNTIME_PACKAGE",
    "SCRIPTS",
    "MODEL_FILES",
    "TOOLING_CONFIGS",
    "TOOLING_PACKAGES",
    "referenced_names",
    "rewrite_config_text",
]

#: the runtime layer: the package bundle configs name
RUNTIME_PACKAGE = custom_modules.__name__
#: the custom-code package of a packaged bundle (the model-zoo convention)
SCRIPTS = "scripts"
#: the repository's tooling packages: a packaged bundle never contains or imports them
TOOLING_PACKAGES = ("raagr2_tools", "data_prep", "benchmarks")
#: configs that run the tooling (export, packaging, compression): not part of a packaged bundle
TOOLING_CONFIGS = ("export.json", "compress.json")
#: the files of ``models/`` that a packaged bundle carries (``model.pt`` is required)
MODEL_FILES = (
    "model.pt",
    "model.ts",
    "model.onnx",
    "model_int8.onnx",
    "model_fp16.onnx",
    "model_openvino.xml",
    "model_openvino.bin",
    "model_openvino_int8.xml",
    "model_openvino_int8.bin",
    "backends.json",
    "export_report.json",
    "export_report.md",
)

_RUNTIME_NAME = re.compile(rf"\b{RUNTIME_PACKAGE}(?=\.)")
_TOOLING_NAME = re.compile(rf"\b(?:{'|'.join(TOOLING_PACKAGES)})(?:\.\w+)+")
_SCRIPTS_WORD = re.compile(rf"\b{SCRIPTS}\b")
_BUNDLE_ROOT = {"_target_": f"{SCRIPTS}.bundle_root"}
_PACKAGE_ONLY_REQUIREMENTS = ("raagr2-slim",)

#: child-process helper: import a dotted name (longest importable module prefix, then attributes)
_RESOLVE = r"""
import importlib, sys

def resolve(name):
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
                continue
            raise
        for attr in parts[i:]:
            try:
                obj = getattr(obj, attr)
            except AttributeError:
                missing = ".".join(parts[i:])
                raise ImportError(f"{name!r}: module {module_name!r} has no attribute path {missing!r}") from None
        return obj
    raise ImportError(f"{name!r}: no importable module prefix")
"""

#: child process, started in an empty folder with no PYTHONPATH: block the repository's packages, drop the
#: repository from sys.path, put the staged bundle first, import every ``scripts.*`` name, check bundle_root()
_SELF_CHECK = (
    _RESOLVE
    + r"""
import os
bundle, blocked, names = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
attempts = []

class _Blocker:
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in blocked:
            attempts.append(fullname)
            raise ImportError(f"{fullname} imported by the packaged bundle: it must only use its scripts/ copy")
        return None

sys.meta_path.insert(0, _Blocker())
sys.path[:] = [p for p in sys.path if p and not any(os.path.isdir(os.path.join(p, b)) for b in blocked)]
sys.path.insert(0, bundle)
for name in names:
    resolve(name)
import scripts
if os.path.realpath(scripts.bundle_root()) != os.path.realpath(bundle):
    raise RuntimeError(f"scripts.bundle_root() returned {scripts.bundle_root()!r}, expected {bundle!r}")
if attempts:
    raise RuntimeError(f"the packaged code tried to import {sorted(set(attempts))}")
"""
)


class PackagingError(ValueError):
    """A bundle cannot be packaged; the message names the file and the problem."""


def rewrite_config_text(text: str) -> str:
    """Config text with the runtime package's dotted names (``custom_modules.x``) renamed ``scripts.x``."""
    return _RUNTIME_NAME.sub(SCRIPTS, text)


def referenced_names(texts: Iterable[str], package: str = RUNTIME_PACKAGE) -> list[str]:
    """Sorted dotted names ``<package>.a.b`` (at least one dot) found in ``texts`` (e.g. ``_target_`` values)."""
    pattern = re.compile(rf"\b{re.escape(package)}(?:\.\w+)+")
    return sorted({match for text in texts for match in pattern.findall(text)})


def _executed_strings(node: Any) -> Iterable[str]:
    """The strings of a config that run code: ``_target_`` values and ``$`` expressions (not descriptions)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_" and isinstance(value, str):
                yield value
            else:
                yield from _executed_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _executed_strings(value)
    elif isinstance(node, str) and node.startswith("$"):
        yield node


def tooling_names(content: Any) -> list[str]:
    """Sorted dotted names of the tooling packages (``raagr2_tools.x``, ``data_prep.x``, ``benchmarks.x``) that
    a config's ``_target_`` values and ``$`` expressions name."""
    return sorted({name for text in _executed_strings(content) for name in _TOOLING_NAME.findall(text)})


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _run_child(code: str, args: Sequence[str], cwd: str | Path, what: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=_child_env(), capture_output=True, text=True
    )
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise PackagingError(f"{what} failed (exit {result.returncode}):\n{tail}")


class BundlePackager:
    """Write ``<output_dir>/<name>.zip``, a bundle that runs without this repository installed.

    Args:
        bundle_root: the bundle folder (``configs/``, ``models/model.pt``, ``LICENSE``, ``docs/``).
        output_dir: where the zip goes (created if needed).
        overwrite: replace an existing ``<name>.zip`` (else it is refused).

    Every model file is checked against ``models/manifest.json`` (corrupt or stale exports are refused with
    the command that rebuilds them) and ``model.pt`` must load weights-only into the bundle's ``network_def``.
    """

    def __init__(self, bundle_root: str | Path, output_dir: str | Path, overwrite: bool = False) -> None:
        self.bundle_root = Path(bundle_root).resolve()
        self.output_dir = Path(output_dir)
        self.overwrite = config_bool(overwrite, "overwrite")
        self.name = self.bundle_root.name
        #: the runtime layer's folder, copied as ``scripts/``
        self.runtime_dir = Path(custom_modules.__file__).resolve().parent

    def run(self) -> Path:
        """Stage, self-check and zip the bundle (world-readable, 0644); print and return the zip's path."""
        self._check_layout()
        target = self.output_dir / f"{self.name}.zip"
        if target.exists() and not self.overwrite:
            raise PackagingError(f"{target} exists (an earlier package, kept); set overwrite true to replace it")
        self._check_models()
        configs = self._rewritten_configs()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"package_{self.name}_") as tmp:
            staged = Path(tmp) / self.name
            self._stage(staged, configs)
            self._self_check(staged, configs)
            target = self._zip(staged)
        print(f"package written: {target}", flush=True)  # what `run package` would otherwise not say
        return target

    # --- checks and rewriting -------------------------------------------------------------------------------
    def _check_layout(self) -> None:
        root = self.bundle_root
        if not (root / "configs").is_dir():
            raise PackagingError(f"{root}/configs not found: {root} is not a bundle folder")
        for required in ("models/model.pt", "LICENSE"):
            if not (root / required).is_file():
                raise PackagingError(
                    f"{root / required} not found: a packaged bundle needs it (train or copy it first)"
                )

    def _check_models(self) -> None:
        """Refuse corrupt or stale model files, and a ``model.pt`` that does not load into the network."""
        models = self.bundle_root / "models"
        for name in MODEL_FILES:
            if (models / name).is_file():
                verify_artefact(models / name)
        load_state_dict_checked(
            bundle_network(self.bundle_root), load_weights(models / "model.pt"), models / "model.pt"
        )

    def _rewritten_configs(self) -> dict[str, str]:
        """``configs/<file>.json`` -> rewritten JSON text (``scripts`` names, ``bundle_root`` component), for
        every runtime config (tooling configs stay behind)."""
        configs: dict[str, str] = {}
        for path in sorted((self.bundle_root / "configs").glob("*.json")):
            text = path.read_text(encoding="utf-8")
            try:
                content = json.loads(text)
            except json.JSONDecodeError as e:
                raise PackagingError(f"{path} is not valid JSON: {e}") from None
            if path.name in TOOLING_CONFIGS:
                continue
            if isinstance(content, dict):
                content.pop(GENERATED_KEY, None)  # the note names the generator in this repository
            tooling = tooling_names(content)
            if tooling:
                raise PackagingError(
                    f"{path} names the tooling {tooling}: a packaged bundle ships only the runtime layer "
                    f"({RUNTIME_PACKAGE}); move the item to a tooling config ({', '.join(TOOLING_CONFIGS)})"
                )
            content = self.rewrite_config(path.name, content)
            for key in ("imports", "+imports"):
                lines = content.get(key, []) if isinstance(content, dict) else []
                bad = [line for line in lines if isinstance(line, str) and _SCRIPTS_WORD.search(line)]
                if bad:
                    raise PackagingError(
                        f"{path}: '{key}' imports custom code {bad}; 'imports' run at initialize, before the bundle "
                        f"folder is on sys.path, so a packaged bundle cannot import it there. Use a "
                        f"'_target_' component instead "
                        f"(e.g. {{'_target_': '{RUNTIME_PACKAGE}.data.load_datalist', ...}})."
                    )
            configs[path.name] = json_text(content)
        if "inference.json" not in configs:
            raise PackagingError(
                f"{self.bundle_root}/configs/inference.json not found: nothing to package for inference"
            )
        return configs

    @staticmethod
    def rewrite_config(name: str, content: Any) -> Any:
        """One config's content with ``scripts`` names; a top-level ``bundle_root`` becomes ``scripts.bundle_root``.

        ``metadata.json`` also loses the requirement on this repository's own distribution (its code is inside).
        """
        content = json.loads(rewrite_config_text(json.dumps(content, ensure_ascii=False)))
        if not isinstance(content, dict):
            return content
        if "bundle_root" in content:
            content["bundle_root"] = dict(_BUNDLE_ROOT)
        if name == "metadata.json":
            for key in ("required_packages_version", "optional_packages_version"):
                if isinstance(content.get(key), dict):
                    for package in _PACKAGE_ONLY_REQUIREMENTS:
                        content[key].pop(package, None)
        return content

    # --- staging --------------------------------------------------------------------------------------------
    def _stage(self, staged: Path, configs: dict[str, str]) -> None:
        root = self.bundle_root
        staged.mkdir(parents=True)
        shutil.copy2(root / "LICENSE", staged / "LICENSE")
        (staged / "configs").mkdir()
        for name, text in configs.items():
            (staged / "configs" / name).write_text(text, encoding="utf-8")
        if (root / "configs" / "logging.conf").is_file():
            shutil.copy2(root / "configs" / "logging.conf", staged / "configs" / "logging.conf")
        if (root / "docs").is_dir():
            shutil.copytree(root / "docs", staged / "docs", ignore=shutil.ignore_patterns("__pycache__"))
        (staged / "models").mkdir()
        for name in (*MODEL_FILES, MANIFEST_NAME):
            if (root / "models" / name).is_file():
                shutil.copy2(root / "models" / name, staged / "models" / name)
        if (staged / "models" / "model.ts").is_file():
            self._rewrite_torchscript(staged / "models" / "model.ts")
            if "model.ts" in read_manifest(staged / "models"):  # re-saved: its checksum changes, its source does not
                record_artefacts(staged / "models", {"model.ts": "model.pt"})
        shutil.copytree(self.runtime_dir, staged / SCRIPTS, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

    def _rewrite_torchscript(self, path: Path) -> None:
        """Re-save ``model.ts`` with its embedded JSON extra files (configs, metadata) rewritten like the configs."""
        import torch

        with zipfile.ZipFile(path) as archive:
            names = [m.group(1) for m in (re.match(r"[^/]+/extra/(.+)$", n) for n in archive.namelist()) if m]
        extra_files = dict.fromkeys(names, "")
        try:
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra_files)
        except Exception as e:
            raise PackagingError(
                f"{self.bundle_root}/models/model.ts cannot be loaded by torch.jit.load: {e}"
            ) from None
        rewritten: dict[str, Any] = {}
        for name, data in extra_files.items():
            text = data.decode("utf-8") if isinstance(data, bytes) else data
            if name.endswith(".json"):
                try:
                    text = json.dumps(self.rewrite_config(name, json.loads(text)))
                except json.JSONDecodeError:
                    text = rewrite_config_text(text)
            rewritten[name] = text
        torch.jit.save(module, str(path), _extra_files=rewritten)

    def _self_check(self, staged: Path, configs: dict[str, str]) -> None:
        executed = [text for config in configs.values() for text in _executed_strings(json.loads(config))]
        names = referenced_names(executed, package=SCRIPTS)
        with tempfile.TemporaryDirectory(prefix="package_check_") as tmp:
            _run_child(
                _SELF_CHECK,
                [str(staged), ",".join((RUNTIME_PACKAGE, *TOOLING_PACKAGES)), *names],
                tmp,
                f"self-check of the packaged {self.name} (importing its scripts.* names without this repository)",
            )

    def _zip(self, staged: Path) -> Path:
        target = self.output_dir / f"{self.name}.zip"
        if target.exists() and not self.overwrite:
            raise PackagingError(f"{target} exists (an earlier package, kept); set overwrite true to replace it")
        fd, tmp_name = tempfile.mkstemp(prefix=f".{self.name}.", suffix=".zip.tmp", dir=self.output_dir)
        os.close(fd)
        try:
            with zipfile.ZipFile(tmp_name, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for path in sorted(p for p in staged.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
                    archive.write(path, f"{self.name}/{path.relative_to(staged).as_posix()}")
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return target


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m raagr2_tools.shipping.package BUNDLE --output_dir DIR``: package it; the zip's path is printed."""
    parser = argparse.ArgumentParser(description="Package a bundle as a self-contained zip (runtime code as scripts/).")
    parser.add_argument("bundle", type=Path, help="the bundle folder")
    parser.add_argument("--output_dir", type=Path, default=Path("dist"), help="where <name>.zip goes (default: dist)")
    args = parser.parse_args(argv)
    try:
        BundlePackager(args.bundle, args.output_dir).run()
    except PackagingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
