"""PyTorch runner: eager or `torch.compile`, on CPU or CUDA; loads safetensors or a PT2 export only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from runners import LoadRequest, Skip, runner


@dataclass(frozen=True)
class TorchParams:
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    threads: int = 0
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"


class TorchSession:
    def __init__(self, module: Any, input_names: tuple[str, ...], device: str, options: dict[str, Any]) -> None:
        import torch

        self._torch = torch
        self._module = module
        self.input_names = input_names
        self._device = device
        self._options = options

    def predict(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            feed = {k: torch.from_numpy(inputs[k]).to(self._device) for k in self.input_names}
            out = self._module(**feed)
            logits = out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, tuple | list) else out)
            if self._device != "cpu":
                torch.cuda.synchronize()
            return logits.float().cpu().numpy()

    def options(self) -> dict[str, Any]:
        return dict(self._options)


def load_module(request: LoadRequest) -> Any:
    """The artefact's nn.Module: a HF directory (safetensors) or a `torch.export` program (.pt2)."""
    import torch

    entry = request.path / (request.manifest.entry or "model")
    if entry.suffix == ".pt2":
        # torch.export archives hold tensors and a graph, not pickled code.
        return torch.export.load(str(entry)).module()
    loader = request.manifest.extra.get("torch_loader", "hf")
    if loader == "hf":
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(str(entry), local_files_only=True)
    if loader == "recipe":
        # Quantised modules are rebuilt from safetensors by a named recipe in the core, so no
        # pickled artefact is ever loaded.
        from quantmatrix.torch_recipes import rebuild

        return rebuild(request.path, request.manifest)
    raise Skip(f"unknown torch loader {loader!r} in manifest extra")


@runner("torch", params=TorchParams, formats=("torch",), devices=("cpu", "cuda"))
def load(request: LoadRequest) -> TorchSession:
    import torch

    p: TorchParams = request.params
    if request.device == "cuda" and not torch.cuda.is_available():
        raise Skip("needs CUDA: no NVIDIA GPU/driver visible to PyTorch")
    torch.set_num_threads(request.threads)
    module = load_module(request).eval().to(request.device)
    if p.dtype != "auto":
        module = module.to(getattr(torch, p.dtype))
    if p.compile:
        module = torch.compile(module, mode=p.compile_mode, dynamic=True)
    names = tuple(t.name for t in request.manifest.io_inputs)
    return TorchSession(
        module,
        names,
        request.device,
        {
            "compile": p.compile,
            "compile_mode": p.compile_mode if p.compile else None,
            "dtype": p.dtype,
            "torch": torch.__version__,
            "interop_threads": torch.get_num_interop_threads(),
        },
    )
