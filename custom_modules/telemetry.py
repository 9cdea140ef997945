"""No usage data leaves the machine: the telemetry of OpenVINO's tools and of NNCF is switched off.

OpenVINO's runtime (``openvino.Core``) sends nothing; its converters (``ovc``, ``openvino.convert_model``) and
NNCF (``nncf.quantize``) report usage through ``openvino_telemetry`` unless told not to, and NNCF does so
without asking. NNCF reads ``NNCF_CI`` once, when it is imported, and then uses its no-op telemetry; the
project never calls the converters (it reads ONNX with ``openvino.Core.read_model``). Importing
:mod:`custom_modules` (every bundle run, the tooling and the benchmarks do) calls :func:`disable_telemetry`
before anything can import NNCF.
"""

from __future__ import annotations

import os

__all__ = ["TELEMETRY_OFF", "disable_telemetry"]

#: environment settings that switch telemetry off, read by the package named in each comment
TELEMETRY_OFF: dict[str, str] = {
    "NNCF_CI": "1",  # nncf.telemetry.wrapper: use NNCFTelemetryStub
}


def disable_telemetry() -> None:
    """Set :data:`TELEMETRY_OFF` in this process's environment (inherited by its children)."""
    for name, value in TELEMETRY_OFF.items():
        os.environ[name] = value
