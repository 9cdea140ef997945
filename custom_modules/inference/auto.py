"""``backend: auto``: run the fastest exported artefact whose accuracy check passed, as timed on this CPU.

The export (``raagr2_tools.shipping``) times PyTorch and every artefact it wrote on real slices of the bundle's
inference size and writes the timings, the result of each artefact's check and the CPU they were measured on
to ``models/backends.json`` (:data:`BACKEND_RECORD`, checksummed in ``models/manifest.json`` and tied to
``model.pt``). :func:`auto_backend` reads it:

- measured on this CPU (same model name and instruction-set flags): the fastest backend, PyTorch included,
  whose check passed and whose file is present and verified;
- measured on another CPU: the same ranking, less the backends whose speed rests on an instruction set this
  CPU lacks (bfloat16: AVX512-BF16 or AMX-BF16; INT8: VNNI or AMX-INT8), since without it those paths are
  emulated and slower than FP32 (``python -m benchmarks.end_to_end`` times every backend end to end; on a CPU
  with AMX it repeats them with AMX and AVX512-BF16 switched off in oneDNN);
- on any CPU without native bfloat16, ``openvino_bf16`` is left out: OpenVINO then runs it in f32, the same
  computation as ``openvino`` under a name that would misreport what ran;
- no record, a refused record, no checked artefact, or a GPU device: PyTorch.

Every choice is logged with its reason.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..artefacts import EXPORT_COMMAND, verify_artefact
from ..errors import ArtefactError
from ..hardware import BF16_FLAGS, INT8_FLAGS, cpu_signature

__all__ = [
    "AUTO",
    "BACKEND_FILES",
    "BACKEND_RECORD",
    "BF16_BACKENDS",
    "EXACT_BACKENDS",
    "INT8_BACKENDS",
    "auto_backend",
    "backend_files",
    "choose_backend",
]

logger = logging.getLogger(__name__)

#: the config value that asks for the choice
AUTO = "auto"
#: exported backend -> its model file under ``models/`` (an OpenVINO IR's weights are the ``.bin`` beside it)
BACKEND_FILES: dict[str, str] = {
    "torchscript": "model.ts",
    "onnxruntime": "model.onnx",
    "onnxruntime_int8": "model_int8.onnx",
    "openvino": "model_openvino.xml",
    "openvino_bf16": "model_openvino.xml",
    "openvino_int8": "model_openvino_int8.xml",
}
#: backends whose output equals PyTorch FP32 within the FP32 tolerance
EXACT_BACKENDS = ("torch", "torchscript", "onnxruntime", "openvino")
#: backends that need native bfloat16 (:data:`custom_modules.hardware.BF16_FLAGS`) to be fast
BF16_BACKENDS = ("openvino_bf16",)
#: backends that need native INT8 dot products (:data:`custom_modules.hardware.INT8_FLAGS`) to be fast
INT8_BACKENDS = ("onnxruntime_int8", "openvino_int8")
#: the export's timing and check record, in ``models/``
BACKEND_RECORD = "backends.json"
#: Python packages each exported backend needs
_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def backend_files(backend: str) -> list[str]:
    """Files under ``models/`` that ``backend`` reads (the IR's ``.bin`` too); none for ``torch``."""
    name = BACKEND_FILES.get(backend)
    if name is None:
        return []
    return [name, name[: -len(".xml")] + ".bin"] if name.endswith(".xml") else [name]


def _usable(models: Path, backend: str) -> str | None:
    """Why ``backend`` cannot run from ``models`` (``None``: it can): package missing, file missing or refused."""
    package = _PACKAGES.get(backend.split("_")[0])
    if package is not None and importlib.util.find_spec(package) is None:
        return f"{package} is not installed"
    for name in backend_files(backend):
        try:
            verify_artefact(models / name)
        except ArtefactError as e:
            return str(e)
    return None


def _hardware_rule(backend: str, flags: set[str]) -> str | None:
    """Why ``backend`` would be slow on a CPU with ``flags`` (``None``: its fast path is native here)."""
    if backend in BF16_BACKENDS and not flags & set(BF16_FLAGS):
        return f"no native bfloat16 ({' or '.join(BF16_FLAGS)}) on this CPU"
    if backend in INT8_BACKENDS and not flags & set(INT8_FLAGS):
        return f"no native INT8 ({' or '.join(INT8_FLAGS)}) on this CPU"
    return None


def auto_backend(bundle_root: str | Path, device: torch.device | str = "cpu") -> tuple[str, str]:
    """The backend ``auto`` runs for the bundle at ``bundle_root`` on ``device``, and why (one sentence)."""
    device = torch.device(device)
    if device.type != "cpu":
        return "torch", f"device {device}: the exported artefacts are timed on the CPU; PyTorch runs on the GPU"
    models = Path(bundle_root) / "models"
    record_path = models / BACKEND_RECORD
    if not record_path.is_file():
        return "torch", (
            f"no {record_path} (the export writes it with the timing and check of every artefact: "
            f"`{EXPORT_COMMAND.format(bundle=bundle_root)}`)"
        )
    try:
        verify_artefact(record_path)
        record: dict[str, Any] = json.loads(record_path.read_text())
        measured = {name: entry for name, entry in record["backends"].items()}
        signature = record["machine"]
    except (ArtefactError, ValueError, KeyError, TypeError) as e:
        return "torch", f"{record_path} refused ({e})"
    here = cpu_signature()
    same_cpu = {k: signature.get(k) for k in here} == here
    candidates: list[tuple[float, str, str]] = []
    left_out: list[str] = []
    for name, entry in measured.items():
        check = entry.get("check", {})
        if not check.get("passed"):
            left_out.append(f"{name}: check failed ({check.get('basis', 'no check')})")
            continue
        ruled = not same_cpu or name in BF16_BACKENDS
        why_not = _usable(models, name) or (_hardware_rule(name, set(here["cpu_flags"])) if ruled else None)
        if why_not:
            left_out.append(f"{name}: {why_not}")
            continue
        candidates.append((float(entry["ms_per_slice"]), name, str(check.get("basis", ""))))
    if not candidates:
        return "torch", f"no checked artefact can run here ({'; '.join(left_out) or 'none exported'})"
    ms, name, basis = min(candidates)
    torch_ms = measured.get("torch", {}).get("ms_per_slice")
    versus = f" vs torch {float(torch_ms):.1f} ms" if torch_ms is not None and name != "torch" else ""
    where = (
        f"timed on this CPU ({here['cpu_model']})"
        if same_cpu
        else f"timed on another CPU ({signature.get('cpu_model')}, flags {signature.get('cpu_flags')}); "
        f"this one is {here['cpu_model']} with flags {here['cpu_flags']}, so backends needing missing "
        "instructions are left out"
    )
    reason = f"fastest checked backend {where}: {ms:.1f} ms per slice{versus}; check: {basis}"
    if left_out:
        reason += f"; not considered: {'; '.join(left_out)}"
    return name, reason


def choose_backend(backend: str, bundle_root: str | Path, device: torch.device | str = "cpu") -> str:
    """``backend`` itself, or for ``"auto"`` the choice of :func:`auto_backend`, logged with its reason."""
    if backend != AUTO:
        return backend
    name, reason = auto_backend(bundle_root, device)
    logger.info("backend auto -> %s: %s", name, reason)
    return name
