"""Named quantisation recipes that rebuild a PyTorch INT8 model from FP32 safetensors.

Quantised torch modules have no safe serialisation (torch.save pickles code), so a torch INT8
artefact holds the FP32 weights (hard links to the reference's files) plus the recipe's name and
parameters; the runner re-applies the recipe at load time. The recipes are deterministic functions
of the weights, so the rebuilt model is the one the builder checked. Load time (reported as cold
start) includes the quantisation.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quantmatrix.errors import ArtifactError
from quantmatrix.records import DynamicInt8Load, Manifest, Pt2eInt8Load, Pt2eQatInt8Load

# The load recipes `rebuild` applies to a sequence classifier's FP32 weights.
CLASSIFIER_RECIPES = (DynamicInt8Load, Pt2eInt8Load, Pt2eQatInt8Load)

# torch.ao.quantization is deprecated in favour of torchao; the manifest says so.
TORCH_AO_DEPRECATION = (
    "torch.ao.quantization.quantize_dynamic is deprecated upstream (pytorch/ao is its replacement); "
    "kept as the baseline the users' notebooks measured"
)


def quantize_dynamic_int8(model: Any, engine: str, keep_fp32: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Dynamic INT8 of every nn.Linear in place (weights int8 per channel/tensor, activations at run time),
    except those under a `keep_fp32` module path (a Linear's own name or a parent's, e.g. the names
    the sensitivity analysis ranks): mixed precision by module filter.

    Returns facts for the manifest: quantised module count, INT8 weight bytes, warnings raised.
    """
    import torch

    def kept(fqn: str) -> bool:
        return any(fqn == k or fqn.startswith(f"{k}.") for k in keep_fp32)

    named = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    unmatched = [k for k in keep_fp32 if not any(n == k or n.startswith(f"{k}.") for n, _ in named)]
    if unmatched:
        raise ArtifactError(f"keep_fp32: no Linear module at or under {unmatched[0]!r}")
    linears = [(n, m) for n, m in named if not kept(n)]
    int8_bytes = sum(m.weight.numel() for _, m in linears)  # one byte per weight once quantised
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if engine == "torch.ao":
            spec: Any = {torch.nn.Linear}
            if keep_fp32:
                qconfig = torch.ao.quantization.default_dynamic_qconfig
                spec = {n: qconfig for n, _ in linears}
            torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)
        elif engine == "torchao":
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

            quantize_(
                model,
                Int8DynamicActivationInt8WeightConfig(),
                filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and not kept(fqn),
            )
        else:
            raise ArtifactError(f"unknown dynamic INT8 engine {engine!r} (expected torch.ao or torchao)")
    notes = sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0][:200]}" for w in caught})
    facts: dict[str, Any] = {"quantized_linear": len(linears), "int8_weight_bytes": int8_bytes, "warnings": notes}
    if keep_fp32:
        facts["kept_fp32_linear"] = [n for n, _ in named if kept(n)]
    return facts


def export_for_pt2e(model: Any, example: dict[str, Any]) -> Any:
    """torch.export of a HF classifier with dynamic batch and sequence dims, called by keyword."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("seq", min=2, max=int(getattr(model.config, "max_position_embeddings", 512)))
    shapes = {name: {0: batch, 1: seq} for name in example}
    with torch.no_grad():
        return torch.export.export(model, (), kwargs=example, dynamic_shapes=shapes, strict=False)


def pt2e_int8(model: Any, calibration: list[dict[str, list[list[int]]]]) -> Any:
    """Static INT8 via PT2E: export -> prepare_pt2e(X86InductorQuantizer) -> calibrate -> convert_pt2e.

    `calibration` is a list of tokenised batches (input name -> token id rows). Returns the converted
    graph module; torch.compile with inductor freezing lowers its quantize/dequantize pairs to
    oneDNN INT8 kernels.
    """
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if not calibration:
        raise ArtifactError("pt2e-int8 needs at least one calibration batch")
    batches = [{k: torch.tensor(v, dtype=torch.long) for k, v in b.items()} for b in calibration]
    prepared = prepare_pt2e(export_for_pt2e(model, batches[0]).module(), x86_quantizer(is_qat=False))
    with torch.no_grad():
        for batch in batches:
            prepared(**batch)
    return convert_pt2e(prepared)


def x86_quantizer(is_qat: bool) -> Any:
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq

    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(is_qat=is_qat))
    return quantizer


def prepare_qat(model: Any, example: dict[str, Any]) -> Any:
    """export -> prepare_qat_pt2e: the graph with fake quantisation that QAT trains."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    return prepare_qat_pt2e(export_for_pt2e(model, example).module(), x86_quantizer(is_qat=True))


def pt2e_qat_int8(model: Any, calibration: list[dict[str, list[list[int]]]], state: Path) -> Any:
    """Rebuild a PT2E QAT model: prepare the FP32 model again, load the trained state, convert.

    The state (trained weights and the fake quantisers' scales and observers) is a safetensors file
    keyed by the prepared graph's own names, so loading it reproduces the trained graph exactly.
    """
    import torch
    from safetensors.torch import load_file
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    example = {k: torch.tensor(v, dtype=torch.long) for k, v in calibration[0].items()}
    prepared = prepare_qat(model, example)
    try:
        prepared.load_state_dict(load_file(str(state)), strict=True)
    except RuntimeError as e:
        raise ArtifactError(f"{state.name} does not match the prepared QAT graph: {str(e).splitlines()[0]}") from None
    move_exported_model_to_eval(prepared)
    return convert_pt2e(prepared)


RECIPES = {"dynamic-int8": quantize_dynamic_int8}
GRAPH_RECIPES: dict[str, Callable[..., Any]] = {"pt2e-int8": pt2e_int8, "pt2e-qat-int8": pt2e_qat_int8}


def apply(model: Any, recipe: dict[str, Any]) -> dict[str, Any]:
    """Apply an in-place recipe (module swaps); returns facts for the manifest."""
    name = recipe.get("name")
    if name not in RECIPES:
        raise ArtifactError(f"unknown torch recipe {name!r} (known: {', '.join([*RECIPES, *GRAPH_RECIPES])})")
    params = {k: v for k, v in recipe.items() if k != "name"}
    return RECIPES[name](model, **params)


def rebuild(path: Path, manifest: Manifest) -> Any:
    """The quantised module for an artefact whose manifest's `load` is one of CLASSIFIER_RECIPES."""
    from transformers import AutoModelForSequenceClassification

    if not isinstance(manifest.load, CLASSIFIER_RECIPES):
        kind = manifest.load.kind if manifest.load else None
        raise ArtifactError(f"artefact {manifest.key}: manifest load {kind!r} is no classifier quantisation recipe")
    recipe = manifest.load.as_recipe()
    model = AutoModelForSequenceClassification.from_pretrained(
        str(path / (manifest.entry or "model")),
        local_files_only=True,
        use_safetensors=True,
        attn_implementation="eager",
    ).eval()
    if recipe.get("name") in GRAPH_RECIPES:
        params = {k: v for k, v in recipe.items() if k not in ("name", "calibration")}
        if "state" in params:
            params["state"] = path / params["state"]
        calibration = json.loads((path / recipe["calibration"]).read_text(encoding="utf-8"))
        return GRAPH_RECIPES[recipe["name"]](model, calibration, **params)
    apply(model, recipe)
    return model
