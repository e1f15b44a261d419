"""PyTorch dynamic INT8 of a causal LM (GPT-2): Conv1D -> Linear, then torch.ao `quantize_dynamic`.

Steps: link the reference's safetensors (no copy) -> prepare: Conv1D -> nn.Linear (GPT-2's attention
and MLP layers are transformers Conv1D, which quantize_dynamic ignores) -> convert: dynamic INT8 of
every Linear -> check greedy tokens and KL against FP32 -> write the recipe into the manifest (the
torch runner re-applies it at load; quantised modules are never pickled).
"""

from __future__ import annotations

from dataclasses import dataclass

from builders import BuildContext, builder
from builders._onnx_lm import check_torch_lm
from builders._recipe import link_reference, recipe_manifest
from quantmatrix.causal_lm import TorchLM, load_lm_with_facts
from quantmatrix.errors import QuantmatrixError
from quantmatrix.records import DynamicInt8LmLoad, Manifest
from quantmatrix.torch_recipes import TORCH_AO_DEPRECATION


@dataclass(frozen=True)
class TorchInt8DynamicLmParams:
    """torch.ao dynamic INT8 has no knobs worth a matrix entry here."""


@builder("torch-int8-dynamic-lm", params=TorchInt8DynamicLmParams, output_format="torch")
def build(ctx: BuildContext, params: TorchInt8DynamicLmParams) -> Manifest:
    ref = ctx.reference
    if ref.manifest.format != "torch" or ref.manifest.task != "text-generation":
        raise QuantmatrixError("torch-int8-dynamic-lm quantises a torch causal-LM reference")
    steps = [link_reference(ctx)]
    load = DynamicInt8LmLoad()
    model, facts = load_lm_with_facts(ctx.out / "model", load.as_recipe())
    steps.append(
        f"prepare+convert: {facts['conv1d_converted']} Conv1D -> nn.Linear, torch.ao.quantization.quantize_dynamic"
        f"({{nn.Linear}}, qint8) on {facts['quantized_linear']} Linear modules"
    )
    check, step = check_torch_lm(TorchLM(model), ref.path)
    steps.append(step)
    return recipe_manifest(
        ctx,
        params,
        load,
        device="cpu",
        steps=steps,
        metrics=check,
        notes=[TORCH_AO_DEPRECATION],
        extra={
            "on_disk": "FP32 safetensors; the INT8 weights exist in memory after the recipe",
            "int8_weight_bytes": facts["int8_weight_bytes"],
            "quantized_linear": facts["quantized_linear"],
        },
    )
