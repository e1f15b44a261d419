"""PyTorch dynamic INT8 PTQ of every nn.Linear: torch.ao `quantize_dynamic` or torchao `quantize_`.

Steps: link the reference's safetensors (no copy) -> prepare/convert: apply the recipe once here
to check it (module count, INT8 weight bytes, agreement with the reference) -> write the recipe
into the manifest; the torch runner re-applies it at load (quantised modules are never pickled).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from builders import BuildContext, builder
from builders._onnx import load_tokenizer, reference_check
from builders._recipe import link_reference, recipe_manifest
from quantmatrix.records import DynamicInt8Load, Manifest
from quantmatrix.torch_recipes import TORCH_AO_DEPRECATION, apply


@dataclass(frozen=True)
class TorchInt8DynamicParams:
    engine: Literal["torch.ao", "torchao"] = "torch.ao"
    # Module paths left FP32 (a Linear or a parent, e.g. the top of a sensitivity ranking): mixed precision.
    keep_fp32: tuple[str, ...] = ()
    check_examples: int = 128


@builder("torch-int8-dynamic", params=TorchInt8DynamicParams, output_format="torch")
def build(ctx: BuildContext, params: TorchInt8DynamicParams) -> Manifest:
    from transformers import AutoModelForSequenceClassification

    from builders.reference import predict_logits

    ctx.reference.require("torch-int8-dynamic quantises a torch reference", format="torch")
    steps = [link_reference(ctx)]

    load = DynamicInt8Load(engine=params.engine, keep_fp32=list(params.keep_fp32))
    model = AutoModelForSequenceClassification.from_pretrained(str(ctx.out / "model"), local_files_only=True).eval()
    facts = apply(model, load.as_recipe())
    api = (
        "torch.ao.quantization.quantize_dynamic({nn.Linear}, qint8)"
        if params.engine == "torch.ao"
        else "torchao quantize_(Int8DynamicActivationInt8WeightConfig())"
    )
    kept = f", {len(facts['kept_fp32_linear'])} kept FP32" if params.keep_fp32 else ""
    steps.append(f"prepare+convert: {api} on {facts['quantized_linear']} Linear modules{kept}")

    tokenizer = load_tokenizer(ctx.out / "tokenizer")
    check = reference_check(
        ctx, lambda texts: predict_logits(model, tokenizer, texts, ctx.model.max_length), params.check_examples
    )
    steps.append(
        f"check: top-1 agreement {check['check_top1_agreement']:.3f} on {check['check_examples']} test examples"
    )
    steps.append("save: recipe in manifest (the runner re-applies it to the FP32 safetensors at load)")
    extra = {
        "int8_weight_bytes": facts["int8_weight_bytes"],
        "quantized_linear": facts["quantized_linear"],
        **({"kept_fp32_linear": facts["kept_fp32_linear"]} if params.keep_fp32 else {}),
        "warnings": facts["warnings"],
        "on_disk": "FP32 safetensors; the INT8 weights exist in memory after the recipe",
    }
    if params.engine == "torch.ao":
        extra["deprecation"] = TORCH_AO_DEPRECATION
    return recipe_manifest(ctx, params, load, device="cpu", steps=steps, metrics=check, extra=extra)
