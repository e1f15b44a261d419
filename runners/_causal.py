"""Causal-LM sessions for the torch, onnxruntime and openvino backends: a Stepper (quantmatrix.causal_lm) per artefact.

Classifier sessions return logits for a batch; a causal LM steps a KV cache, so its sessions have
another shape. Both backends' are made here from the same runner params, which keeps the
classifier runners untouched. No timing here (runners._generation times any Stepper).
"""

from __future__ import annotations

from typing import Any

from quantmatrix.causal_lm import OrtLM, Stepper, TorchLM, load_lm
from runners import LoadRequest, Skip


def load_causal(backend: str, request: LoadRequest) -> tuple[Stepper, dict[str, Any]]:
    """The artefact as a Stepper on `backend`, and the options to record; Skip where it cannot generate."""
    if backend == "torch":
        return _torch(request)
    if backend == "onnxruntime":
        from runners.onnxruntime import load

        # The classifier session's own loader sets providers, threads, spinning and optimisation
        # level; generation binds the same InferenceSession through OrtLM instead of its predict.
        session = load(request)
        return OrtLM(session._session), session.options()
    if backend == "openvino":
        from runners.openvino import load as load_openvino

        # OvModel speaks ONNX Runtime's session surface, so the same stepper binds the same names.
        ov_session = load_openvino(request)
        return OrtLM(ov_session.model), ov_session.options()
    raise Skip(f"backend {backend} does not run causal-LM generation")


def _torch(request: LoadRequest) -> tuple[Stepper, dict[str, Any]]:
    import torch

    p = request.params
    if request.device == "cuda":
        from runners.torch import cuda_unavailable

        if reason := cuda_unavailable(torch):
            raise Skip(f"needs CUDA: {reason}")
    if p.compile:
        raise Skip("generation is measured in eager mode only (torch.compile of a growing KV cache is not set up)")
    if request.manifest.entry and request.manifest.entry.endswith(".pt2"):
        raise Skip(f"{request.manifest.entry}: torch.export archives are not loaded (they contain pickles)")
    loader = request.manifest.extra.get("torch_loader", "hf")
    if loader == "bnb-llm-int8":
        return _bnb(request)
    if loader not in ("hf", "lm-recipe"):
        raise Skip(f"torch loader {loader!r} does not build a causal LM")
    torch.set_num_threads(request.threads)
    recipe = request.manifest.extra.get("recipe") if loader == "lm-recipe" else None
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


def _bnb(request: LoadRequest) -> tuple[Stepper, dict[str, Any]]:
    """bitsandbytes LLM.int8: the load quantises, on the GPU (the model is never moved after it)."""
    import torch

    from quantmatrix.bnb import load_llm_int8, unavailable

    if request.device != "cuda":
        raise Skip("bitsandbytes LLM.int8 runs on CUDA only")
    if reason := unavailable():
        raise Skip(reason)
    recipe = request.manifest.extra.get("recipe") or {}
    model = load_llm_int8(request.path / (request.manifest.entry or "model"), float(recipe.get("threshold", 6.0)))
    return TorchLM(model, "cuda"), {
        "compile": False,
        "dtype": "int8 (LLM.int8, FP16 outliers)",
        "torch": torch.__version__,
        "recipe": recipe,
    }
