"""ONNX Runtime dynamic INT8 of a causal-LM ONNX export (MatMul/Gemm), with the tied output projection untied.

Steps: materialise the output projection as its own initializer (the tied embedding is otherwise
reached through a Transpose, see `materialise_lm_head`) -> quantize_dynamic (weights INT8 per tensor
or per channel, optional reduce_range; activations quantised at run time) -> check the output
projection is a MatMulInteger on a constant INT8 weight -> greedy tokens and KL against FP32.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builders import BuildContext, builder, link_tree
from builders._onnx import onnx_manifest, save_model
from builders._onnx_lm import check_lm, lm_head_path, lm_io, materialise_lm_head
from builders._ort_dynamic import quantize_dynamic_int8
from quantmatrix.records import Manifest
from quantmatrix.sensitivity import QuantSettings


@dataclass(frozen=True)
class OrtInt8DynamicLmParams(QuantSettings):
    # Give the output projection its own weight before quantising (off only to show the trap).
    untie_lm_head: bool = True
    op_types: tuple[str, ...] = ("MatMul", "Gemm")  # empty: every op type quantize_dynamic supports


@builder("ort-int8-dynamic-lm", params=OrtInt8DynamicLmParams, output_format="onnx")
def build(ctx: BuildContext, params: OrtInt8DynamicLmParams) -> Manifest:
    import onnx

    src = ctx.source
    src.require("ort-int8-dynamic-lm quantises a causal-LM ONNX export", format="onnx", task="text-generation")
    steps: list[str] = []
    extra: dict[str, Any] = {"quantizer": "onnxruntime.quantization.quantize_dynamic"}
    model_path = ctx.out / "model.onnx"
    with tempfile.TemporaryDirectory(dir=ctx.out.parent) as tmp:
        model_in = src.file()
        if params.untie_lm_head:
            model = onnx.load(str(model_in))
            done = materialise_lm_head(model)
            steps.append(f"prepare: materialise the output projection: {done or 'already its own initializer'}")
            model_in = Path(tmp) / "untied.onnx"
            save_model(model, model_in)
        quantize_dynamic_int8(model_in, model_path, params, params.op_types)
    steps.append(
        f"quantize: dynamic INT8 of {', '.join(params.op_types) or 'every supported op'}, weights {params.weight_type} "
        f"{'per channel' if params.per_channel else 'per tensor'}{', reduce_range' if params.reduce_range else ''}"
    )
    head = lm_head_path(model_path)
    extra["lm_head"] = head
    source = (
        f"a constant {head['weight_dtype']} weight"
        if head["weight_is_initializer"]
        else f"a weight recomputed per call: {' <- '.join(head['computed_per_call'])}"
    )
    steps.append(f"inspect: output projection is {head['op']} on {source}")
    link_tree(src.path / (src.manifest.tokenizer or "tokenizer"), ctx.out / "tokenizer")
    check = check_lm(model_path, ctx.reference.path)
    steps.append(
        f"check: greedy token agreement {check['check_token_agreement']:.3f}, teacher-forced top-1 "
        f"{check['check_top1']:.3f}, mean KL {check['check_mean_kl']:.2e} vs FP32"
    )
    extra.update(lm_io(model_path))
    return onnx_manifest(
        ctx, params, model_path, precision="int8", device="cpu", steps=steps, metrics=check, extra=extra
    )
