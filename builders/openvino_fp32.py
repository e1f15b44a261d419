"""The FP32 ONNX export converted to an OpenVINO IR (model.xml + model.bin), checked against the reference.

Steps: convert (ov.convert_model of the ONNX file) -> save (ov.save_model, compress_to_fp16=False,
so the weights stay FP32) -> check the IR's logits (CPU plugin, FP32 inference) against the
reference's saved test logits -> link the tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

from builders import BuildContext, builder, link_tree
from builders._onnx import load_tokenizer, reference_check, require_fp32_match
from builders._openvino import ir_logits, ir_manifest
from quantmatrix.openvino_model import IR_FILE, convert_onnx
from quantmatrix.records import Manifest


@dataclass(frozen=True)
class OpenVinoFp32Params:
    # Largest |logit - reference logit| accepted on the check examples (a conversion: float noise only).
    atol: float = 1e-3
    check_examples: int = 128


@builder("openvino-fp32", params=OpenVinoFp32Params, output_format="openvino")
def build(ctx: BuildContext, params: OpenVinoFp32Params) -> Manifest:
    src = ctx.source
    src.require("openvino-fp32 converts a classifier's ONNX export", format="onnx", task="text-classification")
    xml = ctx.out / IR_FILE
    convert_onnx(src.file(), xml)
    steps = [f"convert: ov.convert_model({src.file().name}) -> ov.save_model({IR_FILE}, compress_to_fp16=False)"]
    link_tree(src.path / (src.manifest.tokenizer or "tokenizer"), ctx.out / "tokenizer")
    tokenizer = load_tokenizer(ctx.out / "tokenizer")
    check = reference_check(ctx, ir_logits(xml, tokenizer, ctx.model.max_length), params.check_examples)
    require_fp32_match(check, params.atol, "check_top1_agreement", "OpenVINO IR")
    steps.append(
        f"check: {check['check_examples']} test examples vs reference (CPU plugin, f32), "
        f"max |Δlogit| {check['check_max_abs_logit_diff']:.2e}"
    )
    extra = {"converter": "openvino.convert_model", "source_entry": src.file().name}
    return ir_manifest(ctx, params, precision="fp32", device="cpu", steps=steps, metrics=check, extra=extra)
