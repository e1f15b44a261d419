"""FP32 ONNX export of the reference with Optimum, validated against the PyTorch reference's outputs.

Steps: export (optimum.exporters.onnx.main_export, task text-classification) -> cap the IR version
-> validate logits against the reference -> link the tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

from builders import BuildContext, builder, link_tree
from builders._onnx import export_onnx, load_tokenizer, onnx_manifest, require_fp32_match, validation_check
from quantmatrix.records import Manifest


@dataclass(frozen=True)
class OnnxFp32Params:
    opset: int = 18  # Optimum's recommended minimum for BERT; ORT 1.31 and TensorRT 10 read it
    # Largest |logit - reference logit| accepted on the check examples (FP32 export: float noise only).
    atol: float = 1e-3
    check_examples: int = 128


@builder("onnx-fp32", params=OnnxFp32Params, output_format="onnx")
def build(ctx: BuildContext, params: OnnxFp32Params) -> Manifest:
    ref = ctx.reference
    ref.require("onnx-fp32 exports a torch reference", format="torch")
    export_onnx(ref.path / (ref.manifest.entry or "model"), ctx.out / "model.onnx", params.opset)
    model_path = ctx.out / "model.onnx"
    steps = [f"export: optimum main_export task=text-classification opset={params.opset}"]
    link_tree(ref.path / (ref.manifest.tokenizer or "tokenizer"), ctx.out / "tokenizer")
    tokenizer = load_tokenizer(ctx.out / "tokenizer")
    check = validation_check(ctx, model_path, tokenizer, params.check_examples)
    require_fp32_match(check, params.atol, "check_top1_agreement", "ONNX export")
    steps.append(
        f"validate: {check['check_examples']} test examples vs reference, "
        f"max |Δlogit| {check['check_max_abs_logit_diff']:.2e}"
    )
    extra = {"exporter": "optimum.exporters.onnx.main_export"}
    return onnx_manifest(
        ctx, params, model_path, precision="fp32", device="any", steps=steps, metrics=check, extra=extra
    )
