"""ONNX Runtime runner: CPU (threads, spinning, graph optimisation explicit) and CUDA/TensorRT EPs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from quantmatrix.capabilities import Capability
from runners import LoadRequest, Skip, runner

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
    execution_mode: Literal["sequential", "parallel"] = "sequential"
    threads: int = 0
    trt_fp16: bool = True
    io_binding: bool = True  # CUDA/TensorRT providers only: bind inputs/outputs by name (IOBinding)


class OrtSession:
    def __init__(self, session: Any, options: dict[str, Any], *, io_binding: bool = False) -> None:
        self._session = session
        self.input_names = tuple(i.name for i in session.get_inputs())
        outputs = [o.name for o in session.get_outputs()]
        self._output = "logits" if "logits" in outputs else outputs[0]
        self._options = options
        self._io_binding = io_binding

    def predict(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        # Bound by name: the feed is a dict keyed by the model's own input names.
        if not self._io_binding:
            return self._session.run([self._output], {k: inputs[k] for k in self.input_names})[0]
        # GPU providers: inputs bound by name from host memory, the output left on the device and
        # copied back once, so ORT does no per-call output allocation on the host side.
        binding = self._session.io_binding()
        for name in self.input_names:
            binding.bind_cpu_input(name, np.ascontiguousarray(inputs[name]))
        binding.bind_output(self._output, "cuda")
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def options(self) -> dict[str, Any]:
        return dict(self._options)


def load_error(e: Exception) -> str:
    """ORT's load error without the file path and C++ function signature it wraps around the reason."""
    text = " ".join(str(e).split())
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"Load model from \S+ failed:", "", text)
    return re.sub(r"/onnxruntime_src/\S+:\d+ [^()]*\([^)]*\)\s*", "", text).strip()


def load_lm(request: LoadRequest) -> tuple[Any, dict[str, Any]]:
    """A causal-LM graph for generation: the classifier session's own loader sets providers, threads,
    spinning and optimisation level; generation binds the same InferenceSession through OrtLM."""
    from quantmatrix.causal_lm import OrtLM

    session = load(request)
    return OrtLM(session._session), session.options()


@runner(
    "onnxruntime",
    params=OrtParams,
    formats=("onnx",),
    devices=("cpu", "cuda"),
    capabilities={Capability.SCORES_QUALITY, Capability.GENERATES},
    load_lm=load_lm,
)
def load(request: LoadRequest) -> OrtSession:
    try:
        import onnxruntime as ort
    except ImportError:
        raise Skip("onnxruntime is not installed") from None
    p: OrtParams = request.params
    if p.provider != "cpu":
        from quantmatrix.gpu import probe_cuda

        if request.device != "cuda":
            raise Skip(f"provider {p.provider!r} needs the runner's device to be cuda")
        if (reason := probe_cuda().reason) is not None:
            raise Skip(f"needs CUDA: {reason}")
    providers: list[Any] = ["CPUExecutionProvider"]
    if p.provider == "cuda":
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    elif p.provider == "tensorrt":
        providers = [
            ("TensorrtExecutionProvider", {"trt_fp16_enable": p.trt_fp16}),
            "CUDAExecutionProvider",
            "CPUExecutionProvider",
        ]
    wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    if wanted not in ort.get_available_providers():
        raise Skip(f"{wanted} is not available in this onnxruntime build ({ort.get_available_providers()})")
    so = ort.SessionOptions()
    so.intra_op_num_threads = request.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[p.graph_optimization])
    so.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if p.execution_mode == "parallel" else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if p.allow_spinning else "0")
    entry = request.path / (request.manifest.entry or "model.onnx")
    try:
        session = ort.InferenceSession(str(entry), sess_options=so, providers=providers)
    except Exception as e:  # ORT raises its own Fail/InvalidGraph types with C++ locations inside
        raise RuntimeError(f"onnxruntime cannot load {entry.name}: {load_error(e)}") from None
    used = session.get_providers()[0]
    if used != wanted:
        raise Skip(f"{wanted} could not be initialised (fell back to {used})")
    return OrtSession(
        session,
        io_binding=p.io_binding and p.provider != "cpu",
        options={
            "provider": used,
            "graph_optimization": p.graph_optimization,
            "allow_spinning": p.allow_spinning,
            "execution_mode": p.execution_mode,
            "intra_op_threads": request.threads,
            "inter_op_threads": 1,
            "onnxruntime": ort.__version__,
            "io_binding": p.io_binding and p.provider != "cpu",
        },
    )
