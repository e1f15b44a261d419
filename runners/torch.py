"""PyTorch runner: eager or `torch.compile`, on CPU or CUDA; loads safetensors only (recipes rebuild INT8)."""

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
    # Inductor freezing folds weights into constants; the x86 INT8 (PT2E) lowering needs it.
    freezing: bool = True
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
    """The artefact's nn.Module from safetensors: a HF directory, or one rebuilt by a named recipe.

    `.pt2` archives are refused: torch.export.load unpickles parts of them.
    """
    entry = request.path / (request.manifest.entry or "model")
    if entry.suffix == ".pt2":
        raise Skip(f"{entry.name}: torch.export archives are not loaded (they contain pickles)")
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
    module = load_module(request).to(request.device)
    if hasattr(module, "eval") and not hasattr(module, "graph"):
        module = module.eval()
    if p.dtype != "auto":
        module = module.to(getattr(torch, p.dtype))
    if p.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = p.freezing
        module = torch.compile(module, mode=p.compile_mode, dynamic=True)
    names = tuple(t.name for t in request.manifest.io_inputs)
    return TorchSession(
        module,
        names,
        request.device,
        {
            "compile": p.compile,
            "compile_mode": p.compile_mode if p.compile else None,
            "freezing": p.freezing if p.compile else None,
            "dtype": p.dtype,
            "torch": torch.__version__,
            "interop_threads": torch.get_num_interop_threads(),
        },
    )
