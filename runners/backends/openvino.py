"""OpenVINO runner: an IR (model.xml, or an ONNX entry file) compiled by the CPU plugin, threads and hint explicit.

The compiled model's own properties (what the plugin chose: threads, streams, inference precision)
are read back after compiling and recorded with the OpenVINO version, so a result says how it ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from quantmatrix.capabilities import Capability
from quantmatrix.errors import QuantmatrixError
from runners import LoadRequest, Skip, runner
from runners.graph_backend import GraphSession, import_or_skip

# Compiled-model properties kept in provenance (the others are constant plugin internals).
PROVENANCE = (
    "INFERENCE_NUM_THREADS",
    "NUM_STREAMS",
    "PERFORMANCE_HINT",
    "INFERENCE_PRECISION_HINT",
    "EXECUTION_MODE_HINT",
    "ENABLE_CPU_PINNING",
    "ENABLE_HYPER_THREADING",
    "SCHEDULING_CORE_TYPE",
    "DYNAMIC_QUANTIZATION_GROUP_SIZE",
    "KV_CACHE_PRECISION",
    "EXECUTION_DEVICES",
    "RUNTIME_REQUIREMENTS",
)


@dataclass(frozen=True)
class OpenVinoParams:
    performance_hint: Literal["LATENCY", "THROUGHPUT"] = "LATENCY"
    # f32 keeps an FP32 artefact FP32: on bf16/AMX CPUs the plugin's default is bf16 inference,
    # which would change a variant's numbers behind its name. INT8 layers stay INT8 either way.
    inference_precision: Literal["f32", "bf16", "f16"] = "f32"
    threads: int = 0
    # Further CPU plugin properties, each "NAME=VALUE"; the plugin rejects unknown ones when compiling.
    properties: tuple[str, ...] = ()


def plugin_config(p: OpenVinoParams, threads: int) -> dict[str, Any]:
    config: dict[str, Any] = {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": p.performance_hint,
        "INFERENCE_PRECISION_HINT": p.inference_precision,
    }
    for item in p.properties:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise QuantmatrixError(f"openvino runner property {item!r} is not NAME=VALUE")
        config[name.strip()] = value.strip()
    return config


def _plain(value: Any) -> str:
    """A property value as text: an element type by its name ("f32"), an enum by its member name."""
    if hasattr(value, "get_type_name"):
        return str(value.get_type_name())
    if type(value).__module__.startswith("openvino"):  # pybind11 enums: no enum.Enum base
        return str(getattr(value, "name", value))
    return str(value)


def load_lm(request: LoadRequest) -> tuple[Any, dict[str, Any]]:
    """A causal-LM IR for generation: OvModel speaks ONNX Runtime's session surface, so the same
    stepper binds the same names as on onnxruntime."""
    return load(request).as_lm()


@runner(
    "openvino",
    params=OpenVinoParams,
    formats=("openvino",),
    capabilities={Capability.SCORES_QUALITY, Capability.GENERATES},
    load_lm=load_lm,
)
def load(request: LoadRequest) -> GraphSession:
    import_or_skip("openvino")
    from quantmatrix.openvino_model import IR_FILE, compile_cpu, read_model, version

    if request.device != "cpu":
        raise Skip(f"the openvino runner drives the CPU plugin only; device {request.device!r} is not set up")
    entry = request.path / (request.manifest.entry or IR_FILE)
    config = plugin_config(request.params, request.threads)
    model = compile_cpu(read_model(entry), config, entry.name)
    compiled: dict[str, str] = {}
    for name in PROVENANCE:
        try:
            compiled[name] = _plain(model.compiled.get_property(name))
        except RuntimeError:  # a property this OpenVINO version does not have
            continue
    return GraphSession(
        model,
        options={
            "openvino": version(),
            "plugin": "CPU",
            "entry": entry.name,
            "requested_properties": {k: str(v) for k, v in config.items()},
            "compiled_properties": compiled,
        },
    )
