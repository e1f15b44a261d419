"""OpenVINO runner: an IR (model.xml, or an ONNX entry file) compiled by the CPU plugin, threads and hint explicit.

The compiled model's own properties (what the plugin chose: threads, streams, inference precision)
are read back after compiling and recorded with the OpenVINO version, so a result says how it ran.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

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
    # Sequence lengths (e.g. the padded length) whose [batch, length] inputs run on a copy of the model
    # reshaped to exactly that static shape, compiled on its first call (in the warm-up, untimed); other
    # lengths (natural-length scoring batches) run on the dynamic model. Static shapes let the CPU plugin
    # plan its kernels once.
    static_lengths: tuple[int, ...] = ()


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


class StaticShapes:
    """A graph that sends [batch, length] feeds whose length is in `lengths` to a static-shape compile of
    the model (one per shape, on first use) and everything else to the dynamic one; same surface as OvModel."""

    def __init__(self, dynamic: Any, entry: Path, config: dict[str, Any], lengths: tuple[int, ...]) -> None:
        self.dynamic, self.entry, self.config, self.lengths = dynamic, entry, config, set(lengths)
        self.static: dict[tuple[int, int], Any] = {}

    def get_inputs(self) -> list[Any]:
        return list(self.dynamic.get_inputs())

    def get_outputs(self) -> list[Any]:
        return list(self.dynamic.get_outputs())

    def run(self, outputs: list[str] | None, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self.graph_for(feed).run(outputs, feed)

    def graph_for(self, feed: Mapping[str, np.ndarray]) -> Any:
        # Called per timed call: one input's shape decides (a classifier's inputs share it).
        shape = next(iter(feed.values())).shape
        if len(shape) != 2 or shape[1] not in self.lengths:
            return self.dynamic
        key = (int(shape[0]), int(shape[1]))
        if key not in self.static:
            from quantmatrix.openvino_model import compile_cpu, read_model

            model = read_model(self.entry)
            model.reshape({name: list(key) for name in feed})
            self.static[key] = compile_cpu(model, self.config, f"{self.entry.name} reshaped to {list(key)}")
        return self.static[key]


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
    p: OpenVinoParams = request.params
    graph = StaticShapes(model, entry, config, p.static_lengths) if p.static_lengths else model
    return GraphSession(
        graph,
        options={
            "static_lengths": list(p.static_lengths),
            "openvino": version(),
            "plugin": "CPU",
            "entry": entry.name,
            "requested_properties": {k: str(v) for k, v in config.items()},
            "compiled_properties": compiled,
        },
    )
