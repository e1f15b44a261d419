"""FP32 ONNX export of a causal-LM reference with Optimum, without or with past key/values.

Steps: export (optimum main_export, task text-generation or text-generation-with-past) -> cap the
IR version -> check greedy tokens (with and without the cache) and teacher-forced logits against
the PyTorch reference -> link the tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

from builders import BuildContext, builder, link_tree
from builders._onnx import onnx_manifest, require_fp32_match
from builders._onnx_lm import check_lm, export_lm, lm_io
from quantmatrix.records import Manifest


@dataclass(frozen=True)
class OnnxLmParams:
    with_past: bool = True  # text-generation-with-past: the graph takes and returns the KV cache
    opset: int = 18
    # Largest teacher-forced |logit - reference logit| accepted (FP32 export: float noise only).
    atol: float = 1e-3


@builder("onnx-lm", params=OnnxLmParams, output_format="onnx")
def build(ctx: BuildContext, params: OnnxLmParams) -> Manifest:
    ref = ctx.reference
    ref.require("onnx-lm exports a torch causal-LM reference", format="torch", task="text-generation")
    model_path = ctx.out / "model.onnx"
    task = export_lm(ref.path / (ref.manifest.entry or "model"), model_path, params.opset, params.with_past)
    steps = [f"export: optimum main_export task={task} opset={params.opset}"]
    link_tree(ref.path / (ref.manifest.tokenizer or "tokenizer"), ctx.out / "tokenizer")
    check = check_lm(model_path, ref.path)
    require_fp32_match(check, params.atol, "check_token_agreement", "ONNX export")
    steps.append(
        f"validate: greedy tokens equal the reference's{' with and without the cache' if params.with_past else ''}, "
        f"teacher-forced max |Δlogit| {check['check_max_abs_logit_diff']:.2e}"
    )
    extra = {"exporter": "optimum.exporters.onnx.main_export", "export_task": task, **lm_io(model_path)}
    return onnx_manifest(
        ctx, params, model_path, precision="fp32", device="any", steps=steps, metrics=check, extra=extra
    )
