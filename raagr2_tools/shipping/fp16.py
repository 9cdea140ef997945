"""FP16 copy of an exported network for GPU execution providers (CUDA, TensorRT)."""

from __future__ import annotations

from pathlib import Path

from custom_modules.files import atomic_path


def convert_fp16(fp32_path: str | Path, fp16_path: str | Path) -> dict[str, object]:
    """Write an FP16 copy of ``fp32_path`` with float32 input ``image`` and output ``pred`` (atomically).

    Weights and activations are float16 inside; the I/O stays float32 (``keep_io_types``), so callers feed the
    same arrays as to the FP32 model. On the CPU execution provider it runs, but slower than FP32.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    fp16_path = Path(fp16_path)
    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    props = {p.key: p.value for p in model.metadata_props}
    onnx.helper.set_model_props(model, {**props, "precision": "float16 (float32 I/O)"})
    dropped = _drop_repeated_casts(model)
    with atomic_path(fp16_path) as tmp:
        onnx.save(model, str(tmp))
    return {"keep_io_types": True, "repeated_casts_dropped": dropped}


def _drop_repeated_casts(model) -> int:
    """Remove nodes that repeat an earlier node exactly (same op, inputs, outputs and attributes).

    ``convert_float_to_float16`` inserts one ``<value>_cast_to_fp32`` Cast per consuming edge, so a value that feeds
    a kept-float32 op (e.g. ``Resize``) twice gets two identical Casts defining the same name, which ONNX Runtime
    rejects ("Duplicate definition of name"). Returns the number removed.
    """
    seen: set[bytes] = set()
    kept = []
    for node in model.graph.node:
        key = node.SerializeToString()
        if node.op_type == "Cast" and key in seen:
            continue
        seen.add(key)
        kept.append(node)
    dropped = len(model.graph.node) - len(kept)
    if dropped:
        del model.graph.node[:]
        model.graph.node.extend(kept)
    return dropped
