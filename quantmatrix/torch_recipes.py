"""Named quantisation recipes that rebuild a PyTorch INT8 model from FP32 safetensors.

Quantised torch modules have no safe serialisation (torch.save pickles code), so a torch INT8
artefact holds the FP32 weights (hard links to the reference's files) plus the recipe's name and
parameters; the runner re-applies the recipe at load time. The recipes are deterministic functions
of the weights, so the rebuilt model is the one the builder checked. Load time (reported as cold
start) includes the quantisation.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from quantmatrix.errors import ArtifactError
from quantmatrix.records import Manifest

# torch.ao.quantization is deprecated in favour of torchao; the manifest says so.
TORCH_AO_DEPRECATION = (
    "torch.ao.quantization.quantize_dynamic is deprecated upstream (pytorch/ao is its replacement); "
    "kept as the baseline the users' notebooks measured"
)


def quantize_dynamic_int8(model: Any, engine: str) -> dict[str, Any]:
    """Dynamic INT8 of every nn.Linear in place (weights int8 per channel/tensor, activations at run time).

    Returns facts for the manifest: quantised module count, INT8 weight bytes, warnings raised.
    """
    import torch

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    int8_bytes = sum(m.weight.numel() for m in linears)  # one byte per weight once quantised
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if engine == "torch.ao":
            torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
        elif engine == "torchao":
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

            quantize_(model, Int8DynamicActivationInt8WeightConfig())
        else:
            raise ArtifactError(f"unknown dynamic INT8 engine {engine!r} (expected torch.ao or torchao)")
    notes = sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0][:200]}" for w in caught})
    return {"quantized_linear": len(linears), "int8_weight_bytes": int8_bytes, "warnings": notes}


RECIPES = {"dynamic-int8": quantize_dynamic_int8}


def apply(model: Any, recipe: dict[str, Any]) -> dict[str, Any]:
    name = recipe.get("name")
    if name not in RECIPES:
        raise ArtifactError(f"unknown torch recipe {name!r} (known: {', '.join(RECIPES)})")
    params = {k: v for k, v in recipe.items() if k != "name"}
    return RECIPES[name](model, **params)


def rebuild(path: Path, manifest: Manifest) -> Any:
    """The quantised module for an artefact whose manifest has `extra.torch_loader == "recipe"`."""
    from transformers import AutoModelForSequenceClassification

    recipe = manifest.extra.get("recipe")
    if not isinstance(recipe, dict):
        raise ArtifactError(f"artefact {manifest.key}: manifest extra.recipe is missing")
    model = AutoModelForSequenceClassification.from_pretrained(
        str(path / (manifest.entry or "model")), local_files_only=True, use_safetensors=True
    ).eval()
    apply(model, recipe)
    return model
