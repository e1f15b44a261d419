"""ONNX Runtime runner: CPU (threads, spinning, graph optimisation explicit) and CUDA/TensorRT EPs.

GPU provider options follow the artefact's precision (`provider_config`, a pure function): FP32 on
the CUDA EP with TF32 off, FP16 on the TensorRT EP only for FP16 artefacts, INT8 on the TensorRT EP
only for Q/DQ artefacts; the effective precision is recorded. A session whose first provider is not
the one requested is never timed: ORT falls back to CPU when a provider library does not load.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from quantmatrix.capabilities import Capability
from runners import LoadRequest, Skip, runner
from runners.graph_backend import GraphSession, import_or_skip

_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


@dataclass(frozen=True)
class OrtParams:
    provider: Literal["cpu", "cuda", "tensorrt"] = "cpu"
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    allow_spinning: bool = True
    # Stop the intra-op threads spinning as soon as a run returns (spinning within a run is kept). Without
    # it, two processes taking turns slowed each other's first calls after a hand-over by 1.3x; with it,
    # not (docs/measurements.md). Off by default, as in ONNX Runtime.
    force_spinning_stop: bool = False
    execution_mode: Literal["sequential", "parallel"] = "sequential"
    threads: int = 0
    io_binding: bool = True  # CUDA/TensorRT providers only: bind inputs/outputs by name (IOBinding)
    # TensorRT EP: one optimisation profile from [1, 1] to [trt_max_batch, trt_max_seq] per input, so the
    # timed shapes and the quality pass (batch 32, up to the model's max_length) reuse one engine.
    trt_max_batch: int = 32
    trt_max_seq: int = 128
    trt_cache_dir: str = ""  # "": <tmp>/quantmatrix-ort-trt/<artefact key>


EFFECTIVE = {
    ("cuda", "fp32"): "fp32 (TF32 off)",
    ("cuda", "fp16"): "fp16",
    ("cuda", "int8"): "int8 Q/DQ on the CUDA EP",
    ("tensorrt", "fp32"): "fp32 (TensorRT's default TF32 allowed: the TensorRT EP has no switch for it)",
    ("tensorrt", "fp16"): "fp16",
    ("tensorrt", "int8"): "int8 where the Q/DQ nodes say, fp32 elsewhere",
}
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def provider_config(
    provider: str,
    precision: str,
    input_names: Sequence[str],
    *,
    max_batch: int,
    max_seq: int,
    cache_dir: str,
) -> tuple[list[Any], str]:
    """(providers with their options, effective precision) for an artefact of `precision`.

    The CUDA EP's `use_tf32` defaults to on, which would make "fp32" TF32; TensorRT EP's
    `trt_fp16_enable` applies to the whole model, so it is set only for FP16 artefacts; Q/DQ models
    need `trt_int8_enable` or TensorRT builds them without INT8.
    """
    if provider == "cpu":
        return [PROVIDERS["cpu"]], precision
    if (provider, precision) not in EFFECTIVE:
        raise ValueError(f"no {provider} provider options for precision {precision!r} (expected fp32, fp16 or int8)")
    cuda = (PROVIDERS["cuda"], {"use_tf32": "0"})
    if provider == "cuda":
        return [cuda, PROVIDERS["cpu"]], EFFECTIVE[provider, precision]
    if max_batch < 1 or max_seq < 1:
        raise ValueError(f"TensorRT EP profile needs positive trt_max_batch and trt_max_seq, got {max_batch}x{max_seq}")

    def shapes(b: int, s: int) -> str:
        return ",".join(f"{n}:{b}x{s}" for n in input_names)

    trt = {
        "trt_fp16_enable": str(precision == "fp16"),
        "trt_int8_enable": str(precision == "int8"),
        "trt_profile_min_shapes": shapes(1, 1),
        "trt_profile_opt_shapes": shapes(max_batch, max_seq),
        "trt_profile_max_shapes": shapes(max_batch, max_seq),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": cache_dir,
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": cache_dir,
    }
    return [(PROVIDERS["tensorrt"], trt), cuda, PROVIDERS["cpu"]], EFFECTIVE[provider, precision]


def create_session(ort: Any, path: Path, so: Any, providers: list[Any]) -> Any:
    """An InferenceSession whose first provider is the one asked for; otherwise Skip with the reason.

    ORT silently (a warning) runs on CPU when a provider is missing from the build or its library
    fails to load (cuDNN/cuBLAS/TensorRT off the loader path): such a session must never be timed.
    """
    wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    try:
        session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
    except Exception as e:  # ORT raises its own Fail/InvalidGraph types with C++ locations inside
        raise RuntimeError(f"onnxruntime cannot load {path.name}: {load_error(e)}") from None
    used = session.get_providers()
    if used[0] != wanted:
        raise Skip(
            f"{wanted} is not running this session (onnxruntime {ort.__version__} gave {used}; "
            f"available: {ort.get_available_providers()}): not timed on the fallback"
        )
    return session


class OrtSession(GraphSession):
    """An InferenceSession; on the GPU providers, fed and read through IOBinding when asked."""

    def __init__(self, session: Any, options: dict[str, Any], *, io_binding: bool = False) -> None:
        super().__init__(session, options)
        self._io_binding = io_binding

    def predict(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        if not self._io_binding:
            return super().predict(inputs)
        # GPU providers: inputs bound by name from host memory, the output left on the device and
        # copied back once, so ORT does no per-call output allocation on the host side.
        binding = self.graph.io_binding()
        for name in self.input_names:
            binding.bind_cpu_input(name, np.ascontiguousarray(inputs[name]))
        binding.bind_output(self.output, "cuda")
        self.graph.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]


def load_error(e: Exception) -> str:
    """ORT's load error without the file path and C++ function signature it wraps around the reason."""
    text = " ".join(str(e).split())
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"Load model from \S+ failed:", "", text)
    return re.sub(r"/onnxruntime_src/\S+:\d+ [^()]*\([^)]*\)\s*", "", text).strip()


def load_lm(request: LoadRequest) -> tuple[Any, dict[str, Any]]:
    """A causal-LM graph for generation: the classifier session's own loader sets providers, threads,
    spinning and optimisation level; generation steps the same InferenceSession."""
    return load(request).as_lm()


@runner(
    "onnxruntime",
    params=OrtParams,
    formats=("onnx",),
    devices=("cpu", "cuda"),
    capabilities={Capability.SCORES_QUALITY, Capability.GENERATES},
    load_lm=load_lm,
)
def load(request: LoadRequest) -> OrtSession:
    ort = import_or_skip("onnxruntime")
    p: OrtParams = request.params
    if p.provider != "cpu":
        from quantmatrix.gpu import probe_cuda

        if request.device != "cuda":
            raise Skip(f"provider {p.provider!r} needs the runner's device to be cuda")
        if (reason := probe_cuda().reason) is not None:
            raise Skip(f"needs CUDA: {reason}")
        from quantmatrix.gpu import preload_onnxruntime

        preload_onnxruntime(ort)  # cuDNN/cuBLAS from the nvidia-* wheels, off the loader path outside the image
    names = [t.name for t in request.manifest.io_inputs]
    cache = p.trt_cache_dir or str(Path(tempfile.gettempdir()) / "quantmatrix-ort-trt" / request.manifest.key)
    try:
        providers, effective = provider_config(
            p.provider, request.manifest.precision, names, max_batch=p.trt_max_batch, max_seq=p.trt_max_seq,
            cache_dir=cache,
        )  # fmt: skip
    except ValueError as e:
        raise Skip(str(e)) from None
    if p.provider == "tensorrt":
        Path(cache).mkdir(parents=True, exist_ok=True)
    so = session_options(ort, p, request.threads)
    session = create_session(ort, request.path / (request.manifest.entry or "model.onnx"), so, providers)
    used = session.get_providers()[0]
    return OrtSession(
        session,
        io_binding=p.io_binding and p.provider != "cpu",
        options={
            "provider": used,
            "provider_options": {k: v for k, v in session.get_provider_options().get(used, {}).items()
                                 if k in _RECORDED_OPTIONS},
            "effective_precision": effective,
            "graph_optimization": p.graph_optimization,
            # As the session holds them (read back), not as asked.
            "allow_spinning": _config(session, "session.intra_op.allow_spinning") == "1",
            "force_spinning_stop": _config(session, "session.force_spinning_stop") == "1",
            "execution_mode": p.execution_mode,
            "intra_op_threads": request.threads,
            "inter_op_threads": 1,
            "onnxruntime": ort.__version__,
            "io_binding": p.io_binding and p.provider != "cpu",
        },
    )  # fmt: skip


def session_options(ort: Any, p: OrtParams, threads: int) -> Any:
    """The runner's SessionOptions: threads, graph optimisation, execution mode and spinning from `p`
    (also used by scripts/ort_spinning_pairs.py, so its experiment runs what the runner runs)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[p.graph_optimization])
    so.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if p.execution_mode == "parallel" else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if p.allow_spinning else "0")
    so.add_session_config_entry("session.force_spinning_stop", "1" if p.force_spinning_stop else "0")
    return so


def _config(session: Any, key: str) -> str:
    """A session config entry as the session holds it ("" when unset)."""
    try:
        return str(session.get_session_options().get_session_config_entry(key))
    except Exception:  # onnxruntime raises its own error types for an unset key
        return ""


# Provider options worth keeping in a result: those that change what is computed or cached.
_RECORDED_OPTIONS = {
    "use_tf32", "trt_fp16_enable", "trt_int8_enable", "trt_profile_min_shapes", "trt_profile_opt_shapes",
    "trt_profile_max_shapes", "trt_engine_cache_enable", "device_id",
}  # fmt: skip
