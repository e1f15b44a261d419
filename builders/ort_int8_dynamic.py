"""ONNX Runtime dynamic INT8 quantisation of the FP32 ONNX model, optionally after transformer fusion.

Steps: [fuse: onnxruntime.transformers.optimizer, heads/hidden size read from the model config]
-> quantize_dynamic (weights INT8 per tensor or per channel; activations quantised at run time)
-> check against the reference.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builders import BuildContext, builder, link_tree
from builders._onnx import load_tokenizer, onnx_manifest, save_model, validation_check
from builders._ort_dynamic import quantize_dynamic_int8
from quantmatrix.errors import QuantmatrixError
from quantmatrix.records import DecoderArch, EncoderArch, Manifest
from quantmatrix.sensitivity import QuantSettings


@dataclass(frozen=True)
class OrtInt8DynamicParams(QuantSettings):
    # Fuse attention/LayerNorm/GELU first (onnxruntime.transformers.optimizer, model_type bert).
    fusion: bool = False
    op_types: tuple[str, ...] = ()  # empty: every op type quantize_dynamic supports
    check_examples: int = 128


def fuse(src: Path, dst: Path, arch: EncoderArch | DecoderArch | None, model_type: str = "bert") -> list[str]:
    """Transformer fusion with parameters read from the model config; returns the fused op counts."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    from onnxruntime.transformers.optimizer import optimize_model

    if not isinstance(arch, EncoderArch):
        raise QuantmatrixError(
            f"fusion needs the encoder's num_attention_heads and hidden_size in the reference manifest (arch), "
            f"found {arch.kind if arch else 'none'}"
        )
    optimized = optimize_model(
        str(src),
        model_type=model_type,
        num_heads=arch.num_attention_heads,
        hidden_size=arch.hidden_size,
        opt_level=0,  # python fusions only: the saved graph stays portable across ORT builds
    )
    counts = optimized.get_fused_operator_statistics()
    # Fused ops live in the com.microsoft domain, which onnx's own shape inference cannot type;
    # the quantiser needs every MatMul input typed, so run ORT's symbolic shape inference first.
    save_model(SymbolicShapeInference.infer_shapes(optimized.model, auto_merge=True), dst)
    return [f"{op}={n}" for op, n in sorted(counts.items()) if n]


@builder("ort-int8-dynamic", params=OrtInt8DynamicParams, output_format="onnx")
def build(ctx: BuildContext, params: OrtInt8DynamicParams) -> Manifest:
    src = ctx.source
    src.require("ort-int8-dynamic quantises an ONNX model", format="onnx")
    steps: list[str] = []
    extra: dict[str, Any] = {"quantizer": "onnxruntime.quantization.quantize_dynamic"}
    with tempfile.TemporaryDirectory(dir=ctx.out.parent) as tmp:
        model_in = src.file()
        if params.fusion:
            fused = Path(tmp) / "fused.onnx"
            ops = fuse(model_in, fused, ctx.reference.manifest.arch)
            steps.append(
                f"fuse: onnxruntime.transformers.optimizer model_type=bert ({', '.join(ops) or 'nothing fused'})"
            )
            extra["fused_ops"] = ops
            model_in = fused
        quantize_dynamic_int8(model_in, ctx.out / "model.onnx", params, params.op_types)
    model_path = ctx.out / "model.onnx"
    steps.append(f"quantize: {params.describe()}")
    link_tree(src.path / (src.manifest.tokenizer or "tokenizer"), ctx.out / "tokenizer")
    check = validation_check(ctx, model_path, load_tokenizer(ctx.out / "tokenizer"), params.check_examples)
    steps.append(
        f"check: top-1 agreement {check['check_top1_agreement']:.3f} on {check['check_examples']} test examples"
    )
    return onnx_manifest(
        ctx, params, model_path, precision="int8", device="cpu", steps=steps, metrics=check, extra=extra
    )
