"""The layer boundary: the runtime layer (``custom_modules``, what bundle configs name and packaged bundles ship)
imports none of the tooling, and imports itself only relatively (so it ships unchanged as ``scripts/``)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

RUNTIME = "custom_modules"
TOOLING = ("raagr2_tools", "data_prep", "benchmarks")
BUNDLES = sorted(p.parent.parent for p in (REPO_ROOT / "bundles").glob("*/configs/inference.json"))


def boundary_violations(package_dir: Path, runtime: str = RUNTIME, tooling: tuple[str, ...] = TOOLING) -> list[str]:
    """``"<file>:<line>: <problem>"`` for every import in the package at ``package_dir`` that reaches the
    tooling, or the package itself by its absolute name (every import statement, in functions too)."""
    problems = []
    for path in sorted(package_dir.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                where = f"{path.relative_to(package_dir.parent)}:{node.lineno}"
                if top in tooling:
                    problems.append(f"{where}: the runtime layer imports the tooling module {name}")
                elif top == runtime:
                    problems.append(f"{where}: absolute import of {name} (use a relative import)")
    return problems


def test_runtime_layer_imports_no_tooling() -> None:
    assert boundary_violations(REPO_ROOT / RUNTIME) == []


def test_the_boundary_check_catches_a_runtime_to_tooling_import(tmp_path: Path) -> None:
    """A copy of the runtime layer with one deliberately added tooling import fails the check."""
    import shutil

    copy = shutil.copytree(REPO_ROOT / RUNTIME, tmp_path / RUNTIME, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "losses" / "weighted_bce_dice.py"
    target.write_text(target.read_text() + "\n\ndef _report():\n    from raagr2_tools.reports import markdown_table\n")
    absolute = copy / "transforms" / "case_id.py"
    absolute.write_text("import custom_modules.constants\n" + absolute.read_text())
    problems = boundary_violations(copy)
    assert any("weighted_bce_dice.py" in p and "raagr2_tools.reports" in p for p in problems), problems
    assert any("case_id.py:1: absolute import of custom_modules.constants" in p for p in problems), problems
    assert len(problems) == 2


#: child process: instantiate a bundle's ``network_def`` (and the pruned rebuild) and list the repository
#: modules that got imported
_CLOSURE = r"""
import json, sys
from monai.bundle import ConfigParser
bundle, tooling = sys.argv[1], tuple(sys.argv[2].split(","))
parser = ConfigParser()
parser.read_config(f"{bundle}/configs/inference.json")
parser["bundle_root"] = bundle
net = parser.get_parsed_content("network_def")
pruned = ConfigParser({"net": {"_target_": "custom_modules.networks.pruned.pruned_network",
                               "network": parser.get("network_def"), "pruning_history": []}})
pruned.get_parsed_content("net")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in tooling + ("custom_modules",))
print(json.dumps(loaded))
"""


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_network_def_closure_loads_no_tooling(bundle: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _CLOSURE, str(bundle), ",".join(TOOLING)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert "custom_modules.networks.pruned.rebuild" in loaded
    assert [m for m in loaded if m.split(".")[0] != RUNTIME] == []


def _dotted_targets(node: object) -> set[str]:
    if isinstance(node, dict):
        found = {node["_target_"]} if isinstance(node.get("_target_"), str) else set()
        return found.union(*(_dotted_targets(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_dotted_targets(v) for v in node))
    return set()


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_every_repository_target_of_the_configs_resolves(bundle: Path) -> None:
    """Each ``_target_`` of this repository's packages in a bundle's configs names an existing object."""
    from monai.utils import optional_import

    targets = set()
    for path in (bundle / "configs").glob("*.json"):
        targets |= {t for t in _dotted_targets(json.loads(path.read_text())) if t.split(".")[0] in (RUNTIME, *TOOLING)}
    assert targets
    for target in sorted(targets):
        module, _, name = target.rpartition(".")
        _, found = optional_import(module, name=name)
        assert found, f"{bundle.name}: _target_ {target} does not resolve"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_import_of_repository_code_resolves() -> None:
    """Each ``from <package> import name`` of this repository's packages (in functions too, where a moved
    module would only fail at run time) names an existing module or attribute."""
    import importlib

    packages = (RUNTIME, *TOOLING)
    missing = []
    for path in sorted(p for pkg in packages for p in (REPO_ROOT / pkg).rglob("*.py")):
        package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] in packages:
                module = node.module
            else:
                continue
            imported = importlib.import_module(module)
            for alias in node.names:
                if not hasattr(imported, alias.name):
                    try:
                        importlib.import_module(f"{module}.{alias.name}")
                    except ImportError:
                        missing.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {module} has no {alias.name}")
    assert missing == []


def test_the_compression_core_knows_nothing_of_monai_or_ignite() -> None:
    """Only the MONAI glue (``step.py``) imports MONAI or Ignite: the loop, engine, criteria, schedules, SNIP,
    distillation, settings and resume record are plain PyTorch (the bundle writer edits configs through
    ``raagr2_tools.authoring``)."""
    core = REPO_ROOT / "raagr2_tools" / "compression"
    offenders = []
    for path in sorted(core.glob("*.py")):
        if path.name in ("step.py", "__init__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.name}:{node.lineno}: {n}" for n in names if n.split(".")[0] in ("monai", "ignite")]
    assert offenders == []
