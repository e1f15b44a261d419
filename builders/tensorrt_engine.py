"""TensorRT engines (FP32, FP16, explicit-quantisation INT8) from an ONNX model, with the TensorRT Python API.

Steps: parse (OnnxParser into an explicit-batch network) -> profiles (one optimisation profile
per batch size, min/opt/max sequence lengths from the params) -> build (BuilderConfig: workspace,
FP16 flag for fp16; for int8 the Q/DQ nodes decide what is INT8, the rest FP16 with TensorRT 10's
flags or FP32 strongly typed) -> serialise the engine (TensorRT's plan
format, never a pickle) with its build log and the TensorRT version, GPU name and compute
capability it is tied to. INT8 comes from a QDQ model (explicit quantisation), never from the
deprecated implicit calibrator; TensorRT needs it symmetric, which `qdq_problems` checks first.

Without TensorRT or a GPU the artefact is recorded as `skipped` with the reason, and every run of
it is `skipped` with the same reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from builders import BuildContext, builder, link_tree
from quantmatrix.errors import QuantmatrixError
from quantmatrix.records import EngineTarget, Manifest, TensorSpec

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
    # int8: let the layers the QDQ model leaves unquantised run in FP16 (TensorRT 10's weakly typed
    # INT8+FP16 build, trtexec --int8 --fp16); false, or a TensorRT without precision flags: strongly
    # typed, those layers stay in the model's FP32.
    int8_fp16_fallback: bool = True


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


class _Log:
    """TensorRT's log, kept as the artefact's build.log (and errors echoed to the job's output)."""

    def __init__(self, trt: Any, path: Path, echo: Any) -> None:
        outer = self
        self.lines: list[str] = []
        self._file = path.open("w", encoding="utf-8")

        class Logger(trt.ILogger):  # type: ignore[misc,name-defined]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: Any, msg: str) -> None:
                line = f"[{severity.name if hasattr(severity, 'name') else severity}] {msg}"
                outer.lines.append(line)
                outer._file.write(line + "\n")
                if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                    echo(f"tensorrt: {msg}")

        self.logger = Logger()

    def close(self) -> None:
        self._file.close()


@builder("tensorrt-engine", params=TensorrtEngineParams, output_format="tensorrt", device="cuda")
def build(ctx: BuildContext, params: TensorrtEngineParams) -> Manifest:
    src = ctx.source
    if src.manifest.format != "onnx":
        raise QuantmatrixError(
            f"tensorrt-engine builds from an ONNX model; source {src.manifest.key} is {src.manifest.format}"
        )
    if params.precision == "int8" and (problems := qdq_problems(src.file())):
        raise QuantmatrixError(
            f"source {src.manifest.variant} is not a TensorRT-ready QDQ model: {'; '.join(problems)} "
            '(ort-int8-static with activation_type = "int8", symmetric_activations = true, op_types = ["MatMul"])'
        )
    if reason := _why_not():
        return _skipped(ctx, params, reason)
    import numpy as np
    import tensorrt as trt

    from quantmatrix.gpu import probe_cuda

    device = probe_cuda().device
    assert device is not None
    max_seq = params.max_seq or ctx.model.max_length
    opt_seq = params.opt_seq or max_seq
    log = _Log(trt, ctx.out / "build.log", ctx.log)
    steps: list[str] = []
    try:
        trt_builder = trt.Builder(log.logger)
        # Explicit batch is the only mode in TensorRT 10. INT8 is explicit quantisation either way:
        # the Q/DQ nodes decide what runs in INT8 and no calibrator is ever set.
        has_flags = hasattr(trt.BuilderFlag, "FP16") and hasattr(trt.BuilderFlag, "INT8")
        weak_int8 = params.precision == "int8" and params.int8_fp16_fallback and has_flags
        strongly_typed = (params.precision == "int8" and not weak_int8) or src.manifest.precision == "fp16"
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
        network = trt_builder.create_network(flags)
        parser = trt.OnnxParser(network, log.logger)
        if not parser.parse_from_file(str(src.file())):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise QuantmatrixError(f"TensorRT's ONNX parser rejected {src.file().name}: {'; '.join(errors[:3])}")
        names = [network.get_input(i).name for i in range(network.num_inputs)]
        steps.append(
            f"parse: OnnxParser, {network.num_layers} layers, inputs {names}"
            f"{', strongly typed' if strongly_typed else ''}{', INT8 (QDQ) + FP16 flags' if weak_int8 else ''}"
        )
        config = trt_builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, params.workspace_mib << 20)
        config.builder_optimization_level = params.optimization_level
        if params.precision == "fp16" and not strongly_typed:
            if not hasattr(trt.BuilderFlag, "FP16"):
                raise QuantmatrixError(
                    f"TensorRT {trt.__version__} has no FP16 builder flag: build trt-fp16 from an FP16 ONNX model"
                )
            config.set_flag(trt.BuilderFlag.FP16)
        if weak_int8:
            config.set_flag(trt.BuilderFlag.INT8)
            config.set_flag(trt.BuilderFlag.FP16)
        if params.precision == "fp32" and not params.tf32 and hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)
        profiles = profile_shapes(names, params.batch_sizes, params.min_seq, opt_seq, max_seq)
        for prof in profiles:
            p = trt_builder.create_optimization_profile()
            for name, (lo, opt, hi) in prof.shapes.items():
                p.set_shape(name, lo, opt, hi)
            config.add_optimization_profile(p)
        steps.append(
            f"profiles: batch {[p.batch for p in profiles]}, seq min {params.min_seq} opt {opt_seq} max {max_seq}"
        )
        t0 = time.perf_counter()
        plan = trt_builder.build_serialized_network(network, config)
        if plan is None:
            errors = [ln for ln in log.lines if ln.startswith(("[ERROR]", "[INTERNAL_ERROR]"))]
            raise QuantmatrixError(f"TensorRT could not build the engine: {errors[-1] if errors else 'see build.log'}")
        engine_path = ctx.out / "model.engine"
        engine_path.write_bytes(bytes(plan))
        steps.append(f"build: {params.precision} engine in {time.perf_counter() - t0:.1f}s on {device.name}")
        engine = trt.Runtime(log.logger).deserialize_cuda_engine(engine_path.read_bytes())
        io_in, io_out = [], []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            spec = TensorSpec(
                name=name,
                dtype=np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name,
                shape=[d if d >= 0 else "dynamic" for d in engine.get_tensor_shape(name)],
            )
            (io_in if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else io_out).append(spec)
    finally:
        log.close()
    link_tree(src.path / (src.manifest.tokenizer or "tokenizer"), ctx.out / "tokenizer")
    return ctx.manifest(
        format="tensorrt",
        precision=params.precision,
        params=params,
        entry="model.engine",
        tokenizer="tokenizer",
        io_inputs=io_in,
        io_outputs=io_out,
        device="cuda",
        steps=steps,
        notes=["engines run only with the TensorRT version and GPU model they were built with"],
        engine=EngineTarget(
            tensorrt_version=trt.__version__, gpu_name=device.name, compute_capability=device.compute_capability
        ),
        extra={
            "driver_version": device.driver_version,
            "build_log": "build.log",
            "profiles": [{"batch": p.batch, "shapes": p.shapes} for p in profiles],
            "strongly_typed": strongly_typed,
            "int8_fp16_fallback": weak_int8,
            "source_precision": src.manifest.precision,
        },
    )
