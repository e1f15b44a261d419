"""ONNX FP16 model for ONNX Runtime's CUDA (and TensorRT) execution providers.

Steps: convert: onnxruntime.transformers.float16 (weights and compute in FP16, graph inputs and
outputs kept as the FP32/INT64 the tokenizer and scorer use; ops without FP16 kernels stay FP32)
-> check against the reference on this machine's CPU EP where it has the FP16 kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

from builders import BuildContext, builder, link_tree
from builders._onnx import load_tokenizer, onnx_manifest, save_model, validation_check
from quantmatrix.records import Manifest


@dataclass(frozen=True)
class OrtFp16Params:
    keep_io_types: bool = True  # logits stay float32, so scoring and the guard see the same dtype
    op_block_list: tuple[str, ...] = ()  # extra ops kept in FP32 (ORT's own default list always applies)
    check_examples: int = 128


@builder("ort-fp16", params=OrtFp16Params, output_format="onnx", device="cuda")
def build(ctx: BuildContext, params: OrtFp16Params) -> Manifest:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    src = ctx.source
    src.require("ort-fp16 converts an FP32 ONNX model", format="onnx", precision="fp32")
    model = onnx.load(str(src.file()))
    blocked = sorted({*DEFAULT_OP_BLOCK_LIST, *params.op_block_list})
    half = convert_float_to_float16(model, keep_io_types=params.keep_io_types, op_block_list=blocked)
    model_path = ctx.out / "model.onnx"
    save_model(half, model_path)
    steps = [
        "convert: onnxruntime.transformers.float16.convert_float_to_float16 "
        f"(keep_io_types={params.keep_io_types}, {len(blocked)} op types kept in FP32)"
    ]
    link_tree(src.path / (src.manifest.tokenizer or "tokenizer"), ctx.out / "tokenizer")
    check = validation_check(ctx, model_path, load_tokenizer(ctx.out / "tokenizer"), params.check_examples)
    steps.append(
        f"check: CPU EP, top-1 agreement {check['check_top1_agreement']:.3f}, max |Δlogit| "
        f"{check['check_max_abs_logit_diff']:.2e} on {check['check_examples']} test examples"
    )
    extra = {"converter": "onnxruntime.transformers.float16", "fp32_ops": list(params.op_block_list)}
    return onnx_manifest(
        ctx, params, model_path, precision="fp16", device="cuda", steps=steps, metrics=check, extra=extra
    )
