"""TensorRT engines (FP32, FP16, explicit-quantisation INT8) from an ONNX model, with the TensorRT Python API.

Steps: parse (OnnxParser into an explicit-batch network) -> profiles (one optimisation profile
per batch size, min/opt/max sequence lengths from the params) -> build (BuilderConfig: workspace,
FP16 flag for fp16; int8 is explicit quantisation, built strongly typed with no precision flags, as
TensorRT 10 asks: the Q/DQ nodes decide what is INT8, the rest stays FP32) -> serialise the engine
(TensorRT's plan format, never a pickle) with its build log (INFO and above) and the TensorRT
version, GPU name and compute capability it is tied to -> inspect: the engine inspector's per-layer
JSON (detailed profiling verbosity) is kept as layers.json and the layers running INT8 are
counted; a trt-int8 engine with none fails. INT8 never comes from the deprecated implicit
calibrator; TensorRT needs the QDQ model symmetric, which `qdq_problems` checks first.

Without TensorRT or a GPU the artefact is recorded as `skipped` with the reason, and every run of
it is `skipped` with the same reason.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from builders import BuildContext, builder, link_tree
from quantmatrix.errors import QuantmatrixError
from quantmatrix.records import EngineTarget, Manifest, TensorSpec, atomic_write_text

# predict_all scores the test split in batches of 32, so every engine must admit that batch.
SCORING_BATCH = 32


@dataclass(frozen=True)
class TensorrtEngineParams:
    precision: Literal["fp32", "fp16", "int8"] = "fp16"
    # One optimisation profile per batch size (opt = max = that batch); SCORING_BATCH is always added.
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    min_seq: int = 1
    opt_seq: int = 0  # 0: max_seq
    max_seq: int = 0  # 0: the model's max_length
    workspace_mib: int = 4096
    optimization_level: int = 3  # TensorRT builder optimisation level 0..5
    tf32: bool = False  # fp32 engines: TF32 off unless asked, so "fp32" means FP32 arithmetic


@dataclass(frozen=True)
class Profile:
    """Per input name: (min, opt, max) shapes of one optimisation profile."""

    batch: int
    shapes: dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int]]]


def profile_shapes(
    input_names: list[str], batch_sizes: tuple[int, ...], min_seq: int, opt_seq: int, max_seq: int
) -> list[Profile]:
    """One profile per distinct batch size (plus the scoring batch): [batch, seq] inputs, seq in min..max."""
    if not 1 <= min_seq <= opt_seq <= max_seq:
        raise QuantmatrixError(f"sequence lengths must satisfy 1 <= min {min_seq} <= opt {opt_seq} <= max {max_seq}")
    if any(b < 1 for b in batch_sizes):
        raise QuantmatrixError(f"batch sizes must be positive, got {list(batch_sizes)}")
    profiles = []
    for b in sorted({*batch_sizes, SCORING_BATCH}):
        shapes = {n: ((1, min_seq), (b, opt_seq), (b, max_seq)) for n in input_names}
        profiles.append(Profile(batch=b, shapes=shapes))
    return profiles


def qdq_problems(path: Path, limit: int = 3) -> list[str]:
    """Why TensorRT would reject this QDQ model: no Q/DQ nodes, unsigned or non-zero zero points."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not nodes:
        return ["no QuantizeLinear/DequantizeLinear nodes: INT8 engines need an explicitly quantised (QDQ) model"]
    problems: list[str] = []
    for n in nodes:
        if len(n.input) < 3 or not n.input[2]:
            continue  # no zero point: symmetric int8 by definition
        zp = inits.get(n.input[2])
        if zp is None:
            continue  # computed zero points are rare; TensorRT's parser reports them itself
        if zp.data_type != onnx.TensorProto.INT8:
            kind = onnx.TensorProto.DataType.Name(zp.data_type)
            problems.append(f"{n.op_type} {n.name}: quantised type {kind} (TensorRT's explicit INT8 takes INT8 only)")
        elif np.any(numpy_helper.to_array(zp) != 0):
            problems.append(f"{n.op_type} {n.name}: non-zero zero point (TensorRT quantises symmetrically)")
        if len(problems) >= limit:
            break
    return problems


def _skipped(ctx: BuildContext, params: TensorrtEngineParams, reason: str) -> Manifest:
    ctx.log(f"[skip  ] {ctx.variant.name}: {reason}")
    return ctx.manifest(
        format="tensorrt", precision=params.precision, params=params, device="cuda", status="skipped", reason=reason
    )


def _why_not() -> str | None:
    from quantmatrix.gpu import missing_module, probe_cuda

    return missing_module("tensorrt", "TensorRT") or probe_cuda().reason


SEVERITIES = ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")  # trt.ILogger.Severity 0..4


class BuildLog:
    """TensorRT's log kept in memory (INFO and above by default), written once the build is over.

    TensorRT calls the logger from C++ until the builder, runtime and engine are freed, so nothing
    here can be closed early, and `add` never raises (an exception there can abort the process).
    VERBOSE lines are counted, not kept: they would inflate the artefact and its reported size.
    """

    def __init__(self, keep: str = "INFO", echo: Callable[[str], None] | None = None) -> None:
        self.limit = SEVERITIES.index(keep)
        self.echo = echo
        self.lines: list[str] = []
        self.dropped = 0

    def add(self, severity: int, msg: str) -> None:
        try:
            if severity > self.limit:
                self.dropped += 1
                return
            name = SEVERITIES[severity] if 0 <= severity < len(SEVERITIES) else str(severity)
            self.lines.append(f"[{name}] {msg}")
            if severity <= 1 and self.echo is not None:
                self.echo(f"tensorrt: {msg}")
        except Exception:
            pass

    def errors(self) -> list[str]:
        return [ln for ln in self.lines if ln.startswith(("[ERROR]", "[INTERNAL_ERROR]"))]

    def text(self) -> str:
        tail = f"({self.dropped} lines below {SEVERITIES[self.limit]} not kept)\n" if self.dropped else ""
        return "".join(ln + "\n" for ln in self.lines) + tail


def trt_logger(trt: Any, log: BuildLog) -> Any:
    """A trt.ILogger forwarding to `log`; keep it referenced as long as any TensorRT object lives."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            log.add(int(severity), msg)

    return Logger()


_NOT_COMPUTE = re.compile(r"reformat|quantize|dequantize|shuffle|copy", re.IGNORECASE)


def layer_precisions(info: str) -> tuple[dict[str, int], int]:
    """(layers per input datatype, layers computing in INT8) from the engine inspector's JSON.

    A layer computes in INT8 when it is not a data-movement layer (reformat, Q/DQ, shuffle) and an
    input is INT8 or its tactic is an INT8 kernel (i8i8, imma). Needs detailed profiling verbosity:
    with less, the inspector lists bare layer names and this raises.
    """
    try:
        layers = json.loads(info)["Layers"]
    except (ValueError, KeyError, TypeError) as e:
        raise QuantmatrixError(f"the engine inspector's output is not layer JSON ({e})") from None
    if layers and not isinstance(layers[0], dict):
        raise QuantmatrixError("the engine inspector lists layer names only: build with ProfilingVerbosity.DETAILED")
    by_type: Counter[str] = Counter()
    int8 = 0
    for layer in layers:
        formats = [str(t.get("Format/Datatype", "")) for t in layer.get("Inputs", [])]
        dtype = next((d for d in ("int8", "fp8", "half", "fp16", "bf16", "float", "fp32", "int32", "int64")
                      if formats and d in formats[0].lower()), "other")  # fmt: skip
        by_type[{"half": "fp16", "float": "fp32"}.get(dtype, dtype)] += 1
        tactic = str(layer.get("TacticName", "")).lower()
        int8_input = any("int8" in f.lower() for f in formats)
        if not _NOT_COMPUTE.search(str(layer.get("LayerType", ""))) and (
            int8_input or "i8i8" in tactic or "imma" in tactic
        ):
            int8 += 1
    return dict(sorted(by_type.items())), int8


@builder("tensorrt-engine", params=TensorrtEngineParams, output_format="tensorrt", device="cuda")
def build(ctx: BuildContext, params: TensorrtEngineParams) -> Manifest:
    src = ctx.source
    src.require("tensorrt-engine builds from an ONNX model", format="onnx")
    if params.precision == "int8" and (problems := qdq_problems(src.file())):
        raise QuantmatrixError(
            f"source {src.manifest.variant} is not a TensorRT-ready QDQ model: {'; '.join(problems)} "
            '(ort-int8-static with activation_type = "int8", symmetric_activations = true, op_types = ["MatMul"])'
        )
    if reason := _why_not():
        return _skipped(ctx, params, reason)
    import tensorrt as trt

    from quantmatrix.gpu import probe_cuda

    device = probe_cuda().device
    assert device is not None
    max_seq = params.max_seq or ctx.model.max_length
    opt_seq = params.opt_seq or max_seq
    log = BuildLog("INFO", ctx.log)
    logger = trt_logger(trt, log)  # outlives every TensorRT object: they are all freed inside _build_engine
    try:
        built = _build_engine(trt, logger, log, src, params, ctx.out, opt_seq, max_seq, device.name)
    finally:
        atomic_write_text(ctx.out / "build.log", log.text())
    del logger
    if params.precision == "int8" and built.int8_layers == 0:
        raise QuantmatrixError(
            f"the trt-int8 engine has no layer running INT8 (layers by input type: {built.layer_types}); "
            "TensorRT ignored the Q/DQ nodes: see layers.json and build.log in the artefact"
        )
    profiles = built.profiles
    link_tree(src.path / (src.manifest.tokenizer or "tokenizer"), ctx.out / "tokenizer")
    return ctx.manifest(
        format="tensorrt",
        precision=params.precision,
        params=params,
        entry="model.engine",
        tokenizer="tokenizer",
        io_inputs=built.io_in,
        io_outputs=built.io_out,
        device="cuda",
        steps=built.steps,
        metrics={"int8_layers": float(built.int8_layers), "layers": float(sum(built.layer_types.values()))},
        notes=["engines run only with the TensorRT version and GPU model they were built with"],
        engine=EngineTarget(
            tensorrt_version=trt.__version__, gpu_name=device.name, compute_capability=device.compute_capability
        ),
        extra={
            "driver_version": device.driver_version,
            "build_log": "build.log",
            "profiles": [{"batch": p.batch, "shapes": p.shapes} for p in profiles],
            "strongly_typed": built.strongly_typed,
            "source_precision": src.manifest.precision,
            "engine_layers": "layers.json",
            "layer_input_types": built.layer_types,
            "int8_layers": built.int8_layers,
        },
    )


@dataclass
class _Built:
    steps: list[str]
    io_in: list[TensorSpec]
    io_out: list[TensorSpec]
    profiles: list[Profile]
    strongly_typed: bool
    layer_types: dict[str, int]
    int8_layers: int


def _build_engine(
    trt: Any,
    logger: Any,
    log: BuildLog,
    src: Any,
    params: TensorrtEngineParams,
    out: Path,
    opt_seq: int,
    max_seq: int,
    gpu_name: str,
) -> _Built:
    """Parse, build, serialise and inspect; every TensorRT object is local, so all are freed on return."""
    import numpy as np

    steps: list[str] = []
    trt_builder = trt.Builder(logger)
    # Explicit batch is the only mode in TensorRT 10. INT8 is explicit quantisation, strongly typed
    # with no precision flags (TensorRT 10's guidance): the Q/DQ nodes decide what runs in INT8.
    strongly_typed = params.precision == "int8" or src.manifest.precision == "fp16"
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = trt_builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(src.file())):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise QuantmatrixError(f"TensorRT's ONNX parser rejected {src.file().name}: {'; '.join(errors[:3])}")
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    steps.append(
        f"parse: OnnxParser, {network.num_layers} layers, inputs {names}{', strongly typed' if strongly_typed else ''}"
    )
    config = trt_builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, params.workspace_mib << 20)
    config.builder_optimization_level = params.optimization_level
    # The inspector's per-layer precisions (layers.json) need detailed verbosity.
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if params.precision == "fp16" and not strongly_typed:
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise QuantmatrixError(
                f"TensorRT {trt.__version__} has no FP16 builder flag: build trt-fp16 from an FP16 ONNX model"
            )
        config.set_flag(trt.BuilderFlag.FP16)
    if params.precision == "fp32" and not params.tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    profiles = profile_shapes(names, params.batch_sizes, params.min_seq, opt_seq, max_seq)
    for prof in profiles:
        p = trt_builder.create_optimization_profile()
        for name, (lo, opt, hi) in prof.shapes.items():
            p.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(p)
    steps.append(f"profiles: batch {[p.batch for p in profiles]}, seq min {params.min_seq} opt {opt_seq} max {max_seq}")
    t0 = time.perf_counter()
    plan = trt_builder.build_serialized_network(network, config)
    if plan is None:
        errors = log.errors()
        raise QuantmatrixError(f"TensorRT could not build the engine: {errors[-1] if errors else 'see build.log'}")
    engine_path = out / "model.engine"
    engine_path.write_bytes(bytes(plan))
    steps.append(f"build: {params.precision} engine in {time.perf_counter() - t0:.1f}s on {gpu_name}")
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    io_in: list[TensorSpec] = []
    io_out: list[TensorSpec] = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        spec = TensorSpec(
            name=name,
            dtype=np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name,
            shape=[d if d >= 0 else "dynamic" for d in engine.get_tensor_shape(name)],
        )
        (io_in if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else io_out).append(spec)
    info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    atomic_write_text(out / "layers.json", info)
    layer_types, int8 = layer_precisions(info)
    steps.append(f"inspect: {sum(layer_types.values())} layers by input type {layer_types}, {int8} computing in INT8")
    return _Built(steps, io_in, io_out, profiles, strongly_typed, layer_types, int8)
