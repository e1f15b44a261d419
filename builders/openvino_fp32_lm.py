"""A causal LM's FP32 ONNX export (with or without past key/values) converted to an OpenVINO IR.

Steps: convert (ov.convert_model; the KV cache stays explicit inputs/outputs, as in the ONNX graph)
-> save (compress_to_fp16=False) -> check greedy tokens with and without the cache and
teacher-forced logits against the PyTorch reference -> link the tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

from builders import BuildContext, builder, link_tree
from builders._onnx import require_fp32_match
from builders._openvino import check_ir_lm, ir_manifest, lm_io
from quantmatrix.openvino_model import IR_FILE, convert_onnx
from quantmatrix.records import Manifest


@dataclass(frozen=True)
class OpenVinoFp32LmParams:
    # Largest teacher-forced |logit - reference logit| accepted (a conversion: float noise only).
    atol: float = 1e-3


@builder("openvino-fp32-lm", params=OpenVinoFp32LmParams, output_format="openvino")
def build(ctx: BuildContext, params: OpenVinoFp32LmParams) -> Manifest:
    src = ctx.source
    src.require("openvino-fp32-lm converts a causal-LM ONNX export", format="onnx", task="text-generation")
    xml = ctx.out / IR_FILE
    model = convert_onnx(src.file(), xml)
    steps = [f"convert: ov.convert_model({src.file().name}) -> ov.save_model({IR_FILE}, compress_to_fp16=False)"]
    link_tree(src.path / (src.manifest.tokenizer or "tokenizer"), ctx.out / "tokenizer")
    check = check_ir_lm(xml, ctx.reference.path)
    require_fp32_match(check, params.atol, "check_token_agreement", "OpenVINO IR")
    modes = " with and without the cache" if "check_cache_equal" in check else ""
    steps.append(
        f"check: greedy tokens equal the reference's{modes}, "
        f"teacher-forced max |Δlogit| {check['check_max_abs_logit_diff']:.2e} (CPU plugin, f32)"
    )
    extra = {"converter": "openvino.convert_model", "source_entry": src.file().name, **lm_io(model)}
    return ir_manifest(ctx, params, precision="fp32", device="cpu", steps=steps, metrics=check, extra=extra)
