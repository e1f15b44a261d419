"""Causal-LM sessions for the torch backend: a Stepper (quantmatrix.causal_lm) per artefact.

Classifier sessions return logits for a batch; a causal LM steps a KV cache, so its sessions have
another shape. The torch backend registers `load_torch_lm` as its `load_lm`; kept out of the backend
module, which stays about classifier sessions. No timing here (the generation task times any Stepper).
"""

from __future__ import annotations

from typing import Any

from quantmatrix.causal_lm import Stepper, TorchLM, load_lm
from quantmatrix.records import BnbLlmInt8Load, DynamicInt8LmLoad, HfLoad
from runners import LoadRequest, Skip


def load_torch_lm(request: LoadRequest) -> tuple[Stepper, dict[str, Any]]:
    """The artefact as a Stepper on PyTorch, and the options to record; Skip where it cannot generate."""
    import torch

    p = request.params
    if request.device == "cuda":
        from runners.backends.torch import cuda_unavailable

        if reason := cuda_unavailable(torch):
            raise Skip(f"needs CUDA: {reason}")
    if p.compile:
        raise Skip("generation is measured in eager mode only (torch.compile of a growing KV cache is not set up)")
    if request.manifest.entry and request.manifest.entry.endswith(".pt2"):
        raise Skip(f"{request.manifest.entry}: torch.export archives are not loaded (they contain pickles)")
    load = request.manifest.load
    if isinstance(load, BnbLlmInt8Load):
        return _bnb(request, load)
    if not isinstance(load, HfLoad | DynamicInt8LmLoad):
        raise Skip(f"load recipe {load.kind if load else None!r} does not build a causal LM")
    torch.set_num_threads(request.threads)
    recipe = load.as_recipe() if isinstance(load, DynamicInt8LmLoad) else None
    model = load_lm(request.path / (request.manifest.entry or "model"), recipe).to(request.device)
    if p.dtype != "auto":
        model = model.to(getattr(torch, p.dtype))
    return TorchLM(model, request.device), {
        "compile": False,
        "dtype": p.dtype,
        "torch": torch.__version__,
        "interop_threads": torch.get_num_interop_threads(),
        "recipe": recipe,
    }


def _bnb(request: LoadRequest, load: BnbLlmInt8Load) -> tuple[Stepper, dict[str, Any]]:
    """bitsandbytes LLM.int8: the load quantises, on the GPU (the model is never moved after it)."""
    import torch

    from quantmatrix.bnb import load_llm_int8, unavailable

    if request.device != "cuda":
        raise Skip("bitsandbytes LLM.int8 runs on CUDA only")
    if reason := unavailable():
        raise Skip(reason)
    recipe = load.as_recipe()
    model = load_llm_int8(request.path / (request.manifest.entry or "model"), load.threshold)
    return TorchLM(model, "cuda"), {
        "compile": False,
        "dtype": "int8 (LLM.int8, FP16 outliers)",
        "torch": torch.__version__,
        "recipe": recipe,
    }
