"""PyTorch runner: eager or `torch.compile`, on CPU or CUDA; loads safetensors only (recipes rebuild INT8)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from quantmatrix.capabilities import Capability
from quantmatrix.records import HfLoad
from quantmatrix.torch_recipes import CLASSIFIER_RECIPES
from runners import LoadRequest, Skip, runner

_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}


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
        self._cuda = device.startswith("cuda")
        # CUDA events around the copy in, the forward call and the copy out of every call. The middle
        # span is the device time from before the forward call to after it: it includes the host's
        # Python dispatch whenever the GPU waits on it (batch 1), so it is "forward", not kernel time.
        self._events = [torch.cuda.Event(enable_timing=True) for _ in range(4)] if self._cuda else []
        self._timings: list[tuple[float, float, float]] = []

    def predict(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            if not self._cuda:
                feed = {k: torch.from_numpy(inputs[k]) for k in self.input_names}
                return _logits(self._module(**feed)).float().numpy()
            ev = self._events
            host = {k: torch.from_numpy(inputs[k]) for k in self.input_names}
            ev[0].record()
            feed = {k: t.to(self._device, non_blocking=False) for k, t in host.items()}
            ev[1].record()
            logits = _logits(self._module(**feed)).float()
            ev[2].record()
            out = logits.cpu().numpy()  # a synchronous copy: the forward pass has finished when it returns
            ev[3].record()
            ev[3].synchronize()
            self._timings.append((ev[0].elapsed_time(ev[1]), ev[1].elapsed_time(ev[2]), ev[2].elapsed_time(ev[3])))
            if len(self._timings) > 10000:
                del self._timings[:-5000]
            return out

    def device_timing(self, last: int) -> dict[str, list[float]]:
        """CUDA-event times (ms) of the last `last` calls: h2d, compute, d2h (CUDA only)."""
        rows = self._timings[-last:]
        return {k: [r[i] for r in rows] for i, k in enumerate(("h2d", "compute", "d2h"))}

    def options(self) -> dict[str, Any]:
        return dict(self._options)

    def device_counters(self) -> Any:
        """GPU memory (PyTorch's allocator peak, NVML) and energy around a timed loop; None on CPU."""
        if not self._cuda:
            return None
        from quantmatrix.gpu import DeviceCounters

        torch, device = self._torch, self._device
        return DeviceCounters(
            torch.device(device).index or 0,
            allocator_peak=(
                lambda: torch.cuda.reset_peak_memory_stats(device),
                lambda: int(torch.cuda.max_memory_allocated(device)),
            ),
        )


def _logits(out: Any) -> Any:
    return out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, tuple | list) else out)


def cuda_unavailable(torch: Any) -> str | None:
    """Why PyTorch cannot use a GPU here: the driver's own answer first, then PyTorch's build."""
    from quantmatrix.gpu import probe_cuda

    reasons = []
    if (driver := probe_cuda().reason) is not None:
        reasons.append(driver)
    if torch.version.cuda is None:
        reasons.append(f"PyTorch {torch.__version__} is a CPU-only build")
    if not reasons and not torch.cuda.is_available():
        reasons.append(f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable GPU")
    return "; ".join(reasons) or None


def load_module(request: LoadRequest) -> Any:
    """The artefact's nn.Module from safetensors: a HF directory, or one rebuilt by a named recipe.

    `.pt2` archives are refused: torch.export.load unpickles parts of them.
    """
    entry = request.path / (request.manifest.entry or "model")
    if entry.suffix == ".pt2":
        raise Skip(f"{entry.name}: torch.export archives are not loaded (they contain pickles)")
    load = request.manifest.load
    if isinstance(load, HfLoad):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(str(entry), local_files_only=True)
    if isinstance(load, CLASSIFIER_RECIPES):
        # Quantised modules are rebuilt from safetensors by a named recipe in the core, so no
        # pickled artefact is ever loaded.
        from quantmatrix.torch_recipes import rebuild

        return rebuild(request.path, request.manifest)
    raise Skip(f"load recipe {load.kind if load else None!r} does not build a classifier")


def load_lm(request: LoadRequest) -> tuple[Any, dict[str, Any]]:
    """A causal LM for generation (eager; safetensors or a recipe, or bitsandbytes LLM.int8 on CUDA)."""
    from runners.causal import load_torch_lm

    return load_torch_lm(request)


@runner(
    "torch",
    params=TorchParams,
    formats=("torch",),
    devices=("cpu", "cuda"),
    capabilities={Capability.SCORES_QUALITY, Capability.FP32_BASELINE, Capability.GENERATES},
    load_lm=load_lm,
)
def load(request: LoadRequest) -> TorchSession:
    import torch

    p: TorchParams = request.params
    if request.device == "cuda" and (reason := cuda_unavailable(torch)):
        raise Skip(f"needs CUDA: {reason}")
    torch.set_num_threads(request.threads)
    module = load_module(request).to(request.device)
    if hasattr(module, "eval") and not hasattr(module, "graph"):
        module = module.eval()
    # "auto": the artefact's own precision (transformers 4.x would load FP16 safetensors as FP32).
    dtype = p.dtype if p.dtype != "auto" else _DTYPES.get(request.manifest.precision)
    if dtype is not None:
        module = module.to(getattr(torch, dtype))
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
            "dtype": dtype or p.dtype,
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if request.device == "cuda" else None,
            "interop_threads": torch.get_num_interop_threads(),
            "timing": "CUDA events: h2d, compute = device time of the whole forward call (includes Python "
            "dispatch when the GPU waits on the host), d2h; latency is host wall time"
            if request.device == "cuda"
            else None,
        },
    )
