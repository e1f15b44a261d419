"""Helpers shared by the OpenVINO builders: logits of an IR for the reference check, op counts, the manifest."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from builders._onnx import batches, model_manifest
from quantmatrix.openvino_model import IR_FILE, OvModel, compile_cpu, io_specs, read_model

# The checks compare against FP32: keep the CPU plugin from running an IR in bf16 where it could.
CHECK_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
# Op types that show what a quantiser did to an IR (weights stored low-precision, FakeQuantize inserted).
_KEEP_OPS = ("MatMul", "FakeQuantize", "Convert", "Multiply", "Subtract", "Gather", "Softmax")


def compile_for_check(xml_path: Path) -> OvModel:
    return compile_cpu(read_model(xml_path), CHECK_CONFIG, xml_path.name)


def ir_logits(xml_path: Path, tokenizer: Any, max_length: int) -> Callable[[Sequence[str]], np.ndarray]:
    """A function texts -> the IR's logits (CPU plugin, FP32 inference precision), inputs bound by name."""
    model = compile_for_check(xml_path)

    def logits(texts: Sequence[str]) -> np.ndarray:
        out = [
            model.infer({k: v for k, v in feed.items() if k in model.input_names}, ["logits"])[0]
            for feed in batches(tokenizer, texts, max_length, 32)
        ]
        return np.concatenate(out).astype(np.float32)

    return logits


def op_counts(model: Any) -> dict[str, int]:
    """Node counts per op type in an ov.Model, for the types that show quantisation, plus low-precision constants."""
    counts: dict[str, int] = {}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "Constant":
            dtype = op.get_element_type().get_type_name()
            if dtype in ("i8", "u8", "i4", "u4"):
                kind = f"Constant[{dtype}]"
        counts[kind] = counts.get(kind, 0) + 1
    return {k: v for k, v in sorted(counts.items()) if k in _KEEP_OPS or k.startswith("Constant[")}


def ir_manifest(ctx: Any, params: Any, **fields: Any) -> Any:
    """The manifest every OpenVINO builder writes (`model_manifest`'s `fields`): the IR's own I/O, op counts,
    the OpenVINO version."""
    from quantmatrix.openvino_model import version

    model = read_model(ctx.out / IR_FILE)
    facts = {"openvino": version(), "op_counts": op_counts(model)}
    return model_manifest(ctx, params, format="openvino", entry=IR_FILE, io=io_specs(model), facts=facts, **fields)


def check_ir_lm(xml_path: Path, ref_path: Path) -> dict[str, float]:
    """A causal-LM IR against the FP32 reference: greedy tokens with and without the cache, teacher-forced KL."""
    from builders._onnx_lm import check_graph_lm
    from quantmatrix.causal_lm import OrtLM

    return check_graph_lm(OrtLM(compile_for_check(xml_path)), ref_path)


def lm_io(model: Any) -> dict[str, Any]:
    """Facts about a causal-LM IR for the manifest (as builders._onnx_lm.lm_io says them of an ONNX graph)."""
    past = [p.get_any_name() for p in model.inputs if p.get_any_name().startswith("past_key_values.")]
    return {"with_past": bool(past), "past_inputs": len(past)}
