"""An OpenVINO compiled model behind the ``nn.Module`` call interface (CPU), in FP32, BF16 or INT8."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..artefacts import rebuild_command
from ..errors import ArtefactError

__all__ = ["OPENVINO_PRECISIONS", "OpenVinoNetwork"]

#: ``precision`` -> OpenVINO ``INFERENCE_PRECISION_HINT``: the precision of every operation not quantised in the
#: IR. OpenVINO's CPU plugin defaults to bf16 on CPUs with AMX/AVX512-BF16, so FP32 is always asked for explicitly.
OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}


class OpenVinoNetwork(nn.Module):
    """``forward(image)``: ``(B, C, H, W)`` float tensor -> ``(B, out, H, W)`` float32 tensor on ``image``'s device.

    The IR (``.xml`` + ``.bin``) is compiled once for the CPU with dynamic batch, height and width; an INT8 IR
    (NNCF post-training quantisation) runs its quantised operations in INT8 and the rest in ``precision``.
    Like :class:`~custom_modules.inference.OnnxRuntimeNetwork` it has no parameters and an empty ``state_dict``.
    ``runs_precision`` is what OpenVINO compiled (``"bf16"`` or ``"f32"``): on a CPU without native bfloat16
    (neither AVX-512 BF16 nor AMX) OpenVINO runs a ``"bf16"`` request in f32, and a warning says so.

    Args:
        path: the ``.xml`` file (its weights are the ``.bin`` of the same name).
        precision: ``"fp32"`` or ``"bf16"`` (:data:`OPENVINO_PRECISIONS`) for the operations not quantised.
        num_threads: CPU threads (``INFERENCE_NUM_THREADS``); ``None`` keeps OpenVINO's default (all cores).

    Raises:
        ValueError: an unknown ``precision``.
        ArtefactError: the IR cannot be read or compiled; the message ends with the command that rebuilds it.
    """

    def __init__(self, path: str | Path, precision: str = "fp32", num_threads: int | None = None) -> None:
        super().__init__()
        if precision not in OPENVINO_PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(OPENVINO_PRECISIONS)}, got {precision!r}.")
        import openvino

        self.path, self.precision = Path(path), precision
        config: dict[str, object] = {
            "INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision],
            "PERFORMANCE_HINT": "LATENCY",
        }
        if num_threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(num_threads)
        try:
            core = openvino.Core()
            self.compiled = core.compile_model(core.read_model(str(self.path)), "CPU", config)
        except Exception as e:  # openvino raises RuntimeError with multi-line C++ traces
            first = " ".join(str(e).split())[:300]
            raise ArtefactError(
                f"{self.path}: OpenVINO cannot load it ({type(e).__name__}: {first}); "
                f"rebuild it with: {rebuild_command(self.path)}"
            ) from None
        self.runs_precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if precision == "bf16" and self.runs_precision != "bf16":
            warnings.warn(
                f"{self.path}: bf16 asked for, OpenVINO runs {self.runs_precision} on this CPU (no native bfloat16)",
                stacklevel=2,
            )
        self.request = self.compiled.create_infer_request()
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(image.detach().to(device="cpu", dtype=torch.float32).numpy())
        pred = self.request.infer({0: array}, share_inputs=True)[self.compiled.output(0)]
        return torch.from_numpy(np.array(pred, dtype=np.float32)).to(device=image.device)

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, precision={self.precision!r}, runs_precision={self.runs_precision!r}"
