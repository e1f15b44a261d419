"""bitsandbytes LLM.int8 of a causal LM (GPT-2) on CUDA: the seeds compared it with ONNX Runtime INT8.

Steps: link the reference's safetensors (no copy) -> convert: load with BitsAndBytesConfig
(load_in_8bit, outlier threshold) on the GPU -> check greedy tokens and KL against the FP32
reference -> write the recipe into the manifest (the torch runner repeats the load; nothing 8-bit
is serialised). Without bitsandbytes or a GPU the artefact is `skipped` with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from builders import BuildContext, builder
from builders._recipe import link_reference, recipe_manifest
from quantmatrix.errors import QuantmatrixError
from quantmatrix.records import BnbLlmInt8Load, Manifest


@dataclass(frozen=True)
class TorchInt8BnbLmParams:
    threshold: float = 6.0  # LLM.int8 outlier threshold (bitsandbytes' default)


@builder("torch-int8-bnb-lm", params=TorchInt8BnbLmParams, output_format="torch", device="cuda")
def build(ctx: BuildContext, params: TorchInt8BnbLmParams) -> Manifest:
    from quantmatrix.bnb import int8_modules, load_llm_int8, unavailable

    ref = ctx.reference
    if ref.manifest.format != "torch" or ref.manifest.task != "text-generation":
        raise QuantmatrixError("torch-int8-bnb-lm quantises a torch causal-LM reference")
    load = BnbLlmInt8Load(threshold=params.threshold)
    if reason := unavailable():
        ctx.log(f"[skip  ] {ctx.variant.name}: {reason}")
        return ctx.manifest(
            format="torch", precision="int8", params=params, device="cuda", status="skipped", reason=reason, load=load
        )
    from builders._onnx_lm import check_torch_lm
    from quantmatrix.causal_lm import TorchLM

    steps = [link_reference(ctx)]
    model = load_llm_int8(ctx.out / "model", params.threshold)
    steps.append(
        f"convert: BitsAndBytesConfig(load_in_8bit, threshold {params.threshold}), {int8_modules(model)} 8-bit"
    )
    check, step = check_torch_lm(TorchLM(model, "cuda"), ref.path)
    steps.append(step)
    return recipe_manifest(
        ctx,
        params,
        load,
        device="cuda",
        steps=steps,
        metrics=check,
        extra={
            "on_disk": "FP32 safetensors; bitsandbytes quantises at load (LLM.int8)",
            "int8_modules": int8_modules(model),
        },
    )
