"""A per-layer width -> time table of RAAGR2-Net on a CPU inference backend, and the network latency it predicts.

The latency-aware sparsity search (:mod:`.rl_search`) needs the time of thousands of candidate networks; timing
each whole network would take longer than the search. Instead each conv of the network in its deployed form (split
grouped convs merged, :func:`custom_modules.networks.pruned.structure.merge_split_convs`) is timed alone, as a
one-node ONNX graph (``Conv`` with its kernel, stride, padding, dilation and groups, on its own input size at
``example_shape``) on the chosen backend, at the exact input and output widths a candidate gives it. Entries are
measured the first time a width is asked for and kept in the table (and its file): CPU convolution time is far from
smooth in the channel count (``benchmarks/latency_table.py`` sweeps one conv's width: on the AVX-512 EPYC this was
built on, some widths below 128 ran slower than 128), so no grid with interpolation could predict it.
A candidate's time is then

    predicted_ms = sum over convs of calls * t_conv(kept_in, kept_out) + b * kept_activations

with ``kept_activations`` the fraction of the teacher's conv output elements the candidate still computes (the
element-wise work: activations, attention products, concatenations and upsampling scale with it; batch norms are
folded by the backend) and ``b`` (ms) fitted by least squares to the measured latency of the whole network at a
few uniform widths (:meth:`LatencyTable.calibrate`): what the isolated convs do not account for.
:func:`measure_network_ms` times a whole network on the same backend; the benchmark
``benchmarks/latency_table.py`` reports how well the table predicts networks it was not calibrated on.
"""

from __future__ import annotations

import copy
import json
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from custom_modules.files import write_json
from custom_modules.hardware import cpu_signature
from custom_modules.networks.autocast import without_cpu_autocast
from custom_modules.networks.complexity import wall_times_ms
from custom_modules.networks.pruned.structure import SplitGroupedConv, merge_split_convs

__all__ = [
    "BACKENDS",
    "LatencyTable",
    "conv_layers",
    "conv_model",
    "measure_network_ms",
    "compare_networks_ms",
    "time_onnx_ms",
]

logger = logging.getLogger(__name__)

#: backends a table can be measured on (CPU)
BACKENDS = ("onnxruntime", "openvino")
TABLE_FORMAT = 2


def _runner(backend: str, model_bytes: bytes) -> Callable[[np.ndarray], Any]:
    """A callable running the ONNX model ``model_bytes`` on ``backend`` (CPU, default threads, FP32)."""
    if backend == "onnxruntime":
        import onnxruntime

        session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})
    if backend == "openvino":
        from custom_modules.telemetry import disable_telemetry

        disable_telemetry()
        import openvino

        core = openvino.Core()
        model = core.read_model(model=model_bytes, weights=b"")
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        return lambda x: request.infer([x])
    raise ValueError(f"latency backend must be one of {BACKENDS}, got {backend!r}")


def time_onnx_ms(
    backend: str, model_bytes: bytes, shape: Sequence[int], repeats: int, warmup: int = 2, sessions: int = 1
) -> float:
    """Median wall milliseconds of one run of ``model_bytes`` on ``backend`` for a random input of ``shape``: the
    median over ``sessions`` fresh sessions of each one's median over ``repeats`` runs (one session of a whole
    RAAGR2-Net was 18 ms, the next one 24 ms, on the same 2-core machine: sessions differ more than runs)."""
    x = np.random.default_rng(0).standard_normal(tuple(shape)).astype(np.float32)
    medians = []
    for _ in range(max(1, int(sessions))):
        run = _runner(backend, model_bytes)
        medians.append(statistics.median(wall_times_ms(lambda: run(x), repeats, warmup)))
    return statistics.median(medians)


def conv_model(conv: dict[str, Any], in_channels: int, out_channels: int) -> bytes:
    """A one-node ONNX graph: ``Conv`` as ``conv`` describes it, with ``in_channels`` -> ``out_channels``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    groups = conv["groups"]
    kh, kw = conv["kernel"]
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((out_channels, in_channels // groups, kh, kw)).astype(np.float32)
    bias = rng.standard_normal(out_channels).astype(np.float32)
    h, w = conv["input_hw"]
    node = helper.make_node(
        "Conv",
        ["x", "w", "b"],
        ["y"],
        kernel_shape=[kh, kw],
        strides=list(conv["stride"]),
        pads=[*conv["padding"], *conv["padding"]],
        dilations=list(conv["dilation"]),
        group=groups,
    )
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, in_channels, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return onnx._serialize(model) if hasattr(onnx, "_serialize") else model.SerializeToString()


def deployed(network: nn.Module) -> nn.Module:
    """``network`` as an FP32 runtime runs it: split grouped convs merged and CPU bf16 autocast hooks dropped (a copy
    when either was there; the network itself otherwise)."""
    net = without_cpu_autocast(network)
    if any(isinstance(m, SplitGroupedConv) for m in net.modules()):
        net = copy.deepcopy(net) if net is network else net
        merge_split_convs(net)
    return net


def conv_layers(network: nn.Module, example_shape: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Every ``nn.Conv2d`` of ``network`` in its deployed form, in call order: channels, groups, kernel, stride,
    padding, dilation, input ``[H, W]`` at ``example_shape`` and how often one forward pass calls it."""
    net = deployed(network)
    layers: dict[str, dict[str, Any]] = {}

    def hook(name: str, module: nn.Conv2d, inputs: tuple) -> None:
        if name in layers:
            layers[name]["calls"] += 1
            return
        layers[name] = {
            "in_channels": int(module.in_channels),
            "out_channels": int(module.out_channels),
            "groups": int(module.groups),
            "kernel": [int(k) for k in module.kernel_size],
            "stride": [int(s) for s in module.stride],
            "padding": [int(p) for p in module.padding],
            "dilation": [int(d) for d in module.dilation],
            "input_hw": [int(s) for s in inputs[0].shape[2:]],
            "calls": 1,
        }

    handles = [
        m.register_forward_pre_hook(lambda m, a, n=n: hook(n, m, a))
        for n, m in net.named_modules()
        if isinstance(m, nn.Conv2d)
    ]
    was_training = net.training
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(*example_shape, device=next(net.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
        net.train(was_training)
    return layers


def network_signature(network: nn.Module, example_shape: Sequence[int]) -> dict[str, Any]:
    """What a table is valid for: the deployed network's conv layers (channels and geometry) and the input shape."""
    return {"example_shape": [int(s) for s in example_shape], "layers": conv_layers(network, example_shape)}


class LatencyTable:
    """Per conv: milliseconds by ``(in, out, groups)`` width on one backend, and the calibrated network prediction
    (module docstring). Build one with :meth:`measure` and :meth:`calibrate` (or :meth:`load_or_measure`);
    :meth:`predict_ms` of a pruned copy of the same teacher architecture is its predicted latency. New widths are
    timed when first asked for; :meth:`save` writes the table (``path``) when it has new entries.
    """

    def __init__(self, record: dict[str, Any], path: str | Path | None = None) -> None:
        self.record = record
        self.path = Path(path) if path is not None else None
        self.new_entries = 0

    @property
    def backend(self) -> str:
        return str(self.record["backend"])

    @property
    def layers(self) -> dict[str, dict[str, Any]]:
        return self.record["layers"]

    # ------------------------------------------------------------------------------------------------------
    @classmethod
    def measure(
        cls, network: nn.Module, example_shape: Sequence[int], backend: str = "onnxruntime", repeats: int = 7
    ) -> LatencyTable:
        """A table for ``network`` (the unpruned teacher) with every conv timed at its teacher width."""
        if backend not in BACKENDS:
            raise ValueError(f"latency backend must be one of {BACKENDS}, got {backend!r}")
        signature = network_signature(network, example_shape)
        record = {
            "format": TABLE_FORMAT,
            "backend": backend,
            "backend_version": _backend_version(backend),
            "machine": {**cpu_signature(), "threads": torch.get_num_threads()},
            "example_shape": signature["example_shape"],
            "repeats": int(repeats),
            "layers": {name: {**conv, "ms": {}} for name, conv in signature["layers"].items()},
            "calibration": None,
        }
        table = cls(record)
        started = time.perf_counter()
        for name, conv in table.layers.items():
            table.layer_ms(name, conv["in_channels"], conv["out_channels"], conv["groups"])
        logger.info(
            f"latency table ({backend}): {len(table.layers)} convs timed in {time.perf_counter() - started:.0f} s"
        )
        return table

    @classmethod
    def load_or_measure(
        cls, path: str | Path, network: nn.Module, example_shape: Sequence[int], backend: str = "onnxruntime"
    ) -> LatencyTable:
        """The table at ``path`` when it was measured for this network's layers, shape, backend and CPU; else a new
        one, measured, calibrated and written there (atomically)."""
        path = Path(path)
        signature = network_signature(network, example_shape)
        if path.is_file():
            try:
                table = cls(json.loads(path.read_text()), path)
                if table.matches(signature, backend):
                    logger.info(f"latency table: reusing {path} ({table.entries()} widths timed)")
                    return table
                logger.info(f"latency table: {path} was measured for another network, backend or CPU; measuring again")
            except (ValueError, KeyError, TypeError) as e:
                logger.warning(f"latency table: {path} is unreadable ({e}); measuring again")
        table = cls.measure(network, example_shape, backend)
        table.path = path
        table.calibrate(network)
        table.save()
        return table

    def matches(self, signature: dict[str, Any], backend: str) -> bool:
        """Whether this table holds for ``signature`` (:func:`network_signature`) on ``backend`` on this CPU."""
        r = self.record
        layers = {n: {k: v for k, v in layer.items() if k != "ms"} for n, layer in r["layers"].items()}
        return (
            r.get("format") == TABLE_FORMAT
            and r["backend"] == backend
            and r.get("backend_version") == _backend_version(backend)
            and r["machine"]["cpu_model"] == cpu_signature()["cpu_model"]
            and r["machine"]["cpu_flags"] == cpu_signature()["cpu_flags"]
            and r["example_shape"] == signature["example_shape"]
            and layers == signature["layers"]
            and r.get("calibration") is not None
        )

    def entries(self) -> int:
        return sum(len(layer["ms"]) for layer in self.layers.values())

    def save(self) -> None:
        """Write the table to ``path`` (atomically) if it has entries not yet written."""
        if self.path is not None and (self.new_entries or not self.path.is_file()):
            write_json(self.path, self.record)
            self.new_entries = 0

    # ------------------------------------------------------------------------------------------------------
    def layer_ms(self, name: str, in_channels: int, out_channels: int, groups: int) -> float:
        """Milliseconds of conv ``name`` alone at these widths (timed now if the table does not hold them yet)."""
        layer = self.layers[name]
        key = f"{in_channels}x{out_channels}g{groups}"
        if key not in layer["ms"]:
            model = conv_model({**layer, "groups": groups}, in_channels, out_channels)
            shape = (1, in_channels, *layer["input_hw"])
            layer["ms"][key] = time_onnx_ms(self.backend, model, shape, int(self.record["repeats"]))
            self.new_entries += 1
        return float(layer["ms"][key])

    def features(self, network: nn.Module) -> tuple[float, float]:
        """``(sum of the conv times in ms, kept fraction of conv output elements)`` of ``network``."""
        current = conv_layers(network, self.record["example_shape"])
        unknown = sorted(set(current) - set(self.layers))
        if unknown:
            raise ValueError(f"the latency table has no entry for the convs {unknown[:5]}: it is another network's")
        conv_ms, kept, total = 0.0, 0.0, 0.0
        for name, layer in self.layers.items():
            elements = layer["out_channels"] * layer["calls"] * float(np.prod(layer["input_hw"]))
            total += elements
            now = current.get(name)
            if now is None:
                continue
            kept += elements * now["out_channels"] / layer["out_channels"]
            conv_ms += now["calls"] * self.layer_ms(name, now["in_channels"], now["out_channels"], now["groups"])
        return conv_ms, kept / total

    def calibrate(self, network: nn.Module, ratios: Sequence[float] = (0.0, 0.3, 0.6), repeats: int = 20) -> None:
        """Fit ``b`` to the measured latency of ``network`` (the teacher) pruned uniformly to each of ``ratios``
        (L2 magnitude), by least squares on ``measured - conv term = b * kept``; records the points and the fit."""
        points = []
        for ratio in ratios:
            net = uniform_pruned(network, ratio, self.record["example_shape"])
            measured = measure_network_ms(net, self.record["example_shape"], self.backend, repeats)
            conv_ms, kept = self.features(net)
            points.append({"uniform_ratio": float(ratio), "measured_ms": measured, "conv_ms": conv_ms, "kept": kept})
        kept = np.array([p["kept"] for p in points])
        rest = np.array([p["measured_ms"] - p["conv_ms"] for p in points])
        self.record["calibration"] = {
            "b_ms": float((rest * kept).sum() / (kept * kept).sum()),
            "points": points,
            "repeats": int(repeats),
        }
        for p in points:
            p["predicted_ms"] = self.predict_ms_from(p["conv_ms"], p["kept"])
        shown = ", ".join(
            f"uniform {p['uniform_ratio']:.1f}: {p['measured_ms']:.2f} ms measured, {p['predicted_ms']:.2f} predicted"
            for p in points
        )
        logger.info(f"latency table calibrated: {shown}")

    def predict_ms_from(self, conv_ms: float, kept: float) -> float:
        return float(conv_ms + self.record["calibration"]["b_ms"] * kept)

    def predict_ms(self, network: nn.Module) -> float:
        """Predicted milliseconds of one forward pass of ``network`` at the table's ``example_shape``."""
        if self.record.get("calibration") is None:
            raise RuntimeError("the latency table is not calibrated: call calibrate(teacher) first")
        return self.predict_ms_from(*self.features(network))


def uniform_pruned(network: nn.Module, ratio: float, example_shape: Sequence[int]) -> nn.Module:
    """A copy of ``network`` with ``ratio`` of every prunable layer's channels removed (L2 magnitude), deployed."""
    from .rl_search import pruned_copy

    pruned = pruned_copy(network, ratio, "uniform", example_shape=example_shape).network
    merge_split_convs(pruned)
    return pruned.eval()


def measure_network_ms(
    network: nn.Module, example_shape: Sequence[int], backend: str = "onnxruntime", repeats: int = 20, sessions: int = 5
) -> float:
    """Milliseconds of one forward pass of ``network`` (deployed form, exported with the TorchScript ONNX exporter)
    on ``backend`` at ``example_shape``: the median over ``sessions`` sessions of their median run."""
    from raagr2_tools.shipping.onnx import export_onnx

    net = deployed(network).cpu().eval()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the network's shape check, traced as a constant
        path = export_onnx(net, Path(tmp) / "net.onnx", tuple(example_shape), exporter="torchscript")
        return time_onnx_ms(backend, path.read_bytes(), tuple(example_shape), repeats, sessions=sessions)


def _backend_version(backend: str) -> str:
    if backend == "onnxruntime":
        import onnxruntime

        return str(onnxruntime.__version__)
    import openvino

    return str(openvino.__version__)


def compare_networks_ms(
    networks: dict[str, nn.Module],
    example_shape: Sequence[int],
    backend: str = "onnxruntime",
    rounds: int = 3,
    repeats: int = 20,
    sessions: int = 3,
) -> dict[str, list[float]]:
    """Milliseconds of each network per round, interleaved: every network is exported once (deployed form, FP32,
    TorchScript ONNX exporter), then each round times every network in turn (median over ``sessions`` sessions of
    ``repeats`` runs). The shared machines this runs on change speed over minutes, so only values of the same round
    are compared; ratios are taken round by round."""
    from raagr2_tools.shipping.onnx import export_onnx

    shape = tuple(int(s) for s in example_shape)
    models: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the network's shape check, traced as a constant
        for i, (name, network) in enumerate(networks.items()):
            net = deployed(network).cpu().eval()
            models[name] = export_onnx(net, Path(tmp) / f"net{i}.onnx", shape, exporter="torchscript").read_bytes()
    times: dict[str, list[float]] = {name: [] for name in networks}
    for _ in range(int(rounds)):
        for name, model in models.items():
            times[name].append(time_onnx_ms(backend, model, shape, repeats, sessions=sessions))
    return times
