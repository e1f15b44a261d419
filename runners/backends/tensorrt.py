"""TensorRT runner (pycuda): a serialised engine, device buffers and a stream, I/O bound by tensor name.

The engine's I/O table is read into plain `EngineTensor`s and every decision — which optimisation
profile serves a batch, which array goes to which tensor, whether the output is [batch, labels],
whether the engine was built for this GPU — is a pure function of those, tested without a GPU.
Only `load` and `TensorrtSession` touch TensorRT and CUDA. Each call records CUDA events around
host-to-device copies, the engine's compute and the device-to-host copy (like trtexec), next to
the host wall time the measurement module takes; host staging, shape setting and checks happen
before the first event, so no span includes them.
"""

from __future__ import annotations

import atexit
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from quantmatrix.capabilities import Capability
from quantmatrix.records import EngineTarget
from runners import LoadRequest, Skip, runner

Shape = tuple[int, ...]


@dataclass(frozen=True)
class TensorrtParams:
    # Device timing samples kept per session (the most recent calls: a cell's timed loop).
    max_timing_samples: int = 5000
    device: int = 0  # CUDA device ordinal (of those CUDA_VISIBLE_DEVICES leaves)


@dataclass(frozen=True)
class EngineTensor:
    """One row of the engine's I/O table: name, direction, NumPy dtype, shape (-1 = dynamic)."""

    name: str
    mode: Literal["input", "output"]
    dtype: str
    shape: Shape


@dataclass(frozen=True)
class ProfileRange:
    """One optimisation profile: per input name, its (min, opt, max) shapes."""

    index: int
    shapes: Mapping[str, tuple[Shape, Shape, Shape]]

    def admits(self, shapes: Mapping[str, Shape]) -> bool:
        for name, shape in shapes.items():
            lo, _, hi = self.shapes[name]
            if len(shape) != len(lo) or any(s < a or s > b for s, a, b in zip(shape, lo, hi, strict=True)):
                return False
        return True


class EngineError(Exception):
    """The engine's I/O table does not fit the artefact (wrong names, outputs, shapes)."""


def split_io(table: Sequence[EngineTensor], output_name: str | None = None) -> tuple[list[EngineTensor], EngineTensor]:
    """The input tensors and the one logits output of an engine's I/O table, found by name."""
    inputs = [t for t in table if t.mode == "input"]
    outputs = [t for t in table if t.mode == "output"]
    if not inputs:
        raise EngineError("engine has no input tensors")
    if output_name is not None:
        named = [t for t in outputs if t.name == output_name]
        if not named:
            raise EngineError(f"engine has no output named {output_name!r} (outputs: {[t.name for t in outputs]})")
        return inputs, named[0]
    if len(outputs) != 1:
        raise EngineError(f"engine has {len(outputs)} outputs {[t.name for t in outputs]}; expected one (logits)")
    return inputs, outputs[0]


def bind_inputs(
    inputs: Sequence[EngineTensor], feed: Mapping[str, np.ndarray]
) -> list[tuple[EngineTensor, np.ndarray]]:
    """Pair each engine input with the feed's array of the same NAME (never by position), cast to its dtype."""
    missing = [t.name for t in inputs if t.name not in feed]
    if missing:
        raise EngineError(f"feed lacks engine inputs {missing} (feed has {sorted(feed)})")
    bound = []
    for t in inputs:
        arr = np.ascontiguousarray(feed[t.name], dtype=np.dtype(t.dtype))
        if len(arr.shape) != len(t.shape) or any(d not in (-1, s) for d, s in zip(t.shape, arr.shape, strict=True)):
            raise EngineError(f"input {t.name!r} has shape {list(arr.shape)}; the engine declares {list(t.shape)}")
        bound.append((t, arr))
    return bound


def pick_profile(profiles: Sequence[ProfileRange], shapes: Mapping[str, Shape]) -> int:
    """The profile that admits every input shape, preferring the tightest (smallest max batch)."""
    fitting = [p for p in profiles if p.admits(shapes)]
    if not fitting:
        covered = "; ".join(
            f"profile {p.index}: " + ", ".join(f"{n} {list(lo)}..{list(hi)}" for n, (lo, _, hi) in p.shapes.items())
            for p in profiles
        )
        wanted = ", ".join(f"{n} {list(s)}" for n, s in shapes.items())
        raise EngineError(
            f"no optimisation profile admits {wanted} ({covered}): add the batch size or sequence length "
            "to the variant's params and rebuild"
        )
    return min(fitting, key=lambda p: max(hi[0] for _, _, hi in p.shapes.values())).index


def check_output_shape(shape: Shape, batch: int, num_labels: int) -> None:
    if tuple(shape) != (batch, num_labels):
        raise EngineError(f"engine output shape {list(shape)}, expected [batch={batch}, num_labels={num_labels}]")


def engine_mismatch(built: EngineTarget, here: EngineTarget) -> str | None:
    """Why an engine cannot be loaded here (built for another TensorRT or GPU), or None."""
    problems = []
    if built.tensorrt_version != here.tensorrt_version:
        problems.append(f"TensorRT {built.tensorrt_version} (this machine: {here.tensorrt_version})")
    if built.compute_capability != here.compute_capability:
        problems.append(f"compute capability {built.compute_capability} (this GPU: {here.compute_capability})")
    if built.gpu_name != here.gpu_name:
        problems.append(f"GPU {built.gpu_name!r} (this machine: {here.gpu_name!r})")
    if not problems:
        return None
    return "engine built for " + ", ".join(problems) + ": rebuild it on this machine (python -m builders build --force)"


def max_shape(profiles: Sequence[ProfileRange], name: str) -> Shape:
    """The largest shape any profile admits for `name` (buffers are allocated once, this big)."""
    shapes = [p.shapes[name][2] for p in profiles]
    return tuple(max(s[i] for s in shapes) for i in range(len(shapes[0])))


# -- TensorRT and CUDA from here on -------------------------------------------------------------------


def read_io_table(engine: Any, trt: Any) -> list[EngineTensor]:
    table = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        mode: Literal["input", "output"] = "input" if is_input else "output"
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name
        table.append(EngineTensor(name, mode, dtype, tuple(engine.get_tensor_shape(name))))
    return table


def read_profiles(engine: Any, inputs: Sequence[EngineTensor]) -> list[ProfileRange]:
    profiles = []
    for k in range(engine.num_optimization_profiles):
        shapes = {}
        for t in inputs:
            lo, opt, hi = engine.get_tensor_profile_shape(t.name, k)
            shapes[t.name] = (tuple(lo), tuple(opt), tuple(hi))
        profiles.append(ProfileRange(k, shapes))
    return profiles


class _Timings:
    """CUDA-event times of the most recent calls, in ms: (h2d, compute, d2h)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.rows: list[tuple[float, float, float]] = []

    def add(self, row: tuple[float, float, float]) -> None:
        self.rows.append(row)
        if len(self.rows) > 2 * self.limit:
            del self.rows[: -self.limit]


class TensorrtSession:
    def __init__(
        self,
        *,
        cuda: Any,
        engine: Any,
        inputs: list[EngineTensor],
        output: EngineTensor,
        profiles: list[ProfileRange],
        num_labels: int,
        options: dict[str, Any],
        timing_limit: int,
        ordinal: int = 0,
    ) -> None:
        self._cuda = cuda
        self._ordinal = ordinal
        self._buffer_bytes: list[int] = []
        self._engine = engine
        self._inputs, self._output = inputs, output
        self._profiles = profiles
        self._num_labels = num_labels
        self._options = options
        self.input_names = tuple(t.name for t in inputs)
        self._stream = cuda.Stream()
        self._events = [cuda.Event() for _ in range(4)]
        self._timings = _Timings(timing_limit)
        # One execution context per optimisation profile, each with its own device buffers bound
        # by tensor name once, sized for the profile's largest shapes; pinned host staging buffers.
        self._contexts: list[Any] = []
        self._device: list[dict[str, Any]] = []
        self._host: dict[str, np.ndarray] = {}
        for p in profiles:
            ctx = engine.create_execution_context()
            ctx.set_optimization_profile_async(p.index, self._stream.handle)
            buffers: dict[str, Any] = {}
            for t in inputs:
                hi = p.shapes[t.name][2]
                ctx.set_input_shape(t.name, hi)
                nbytes = int(np.prod(hi)) * np.dtype(t.dtype).itemsize
                buffers[t.name] = cuda.mem_alloc(nbytes)
                self._buffer_bytes.append(nbytes)
                ctx.set_tensor_address(t.name, int(buffers[t.name]))
            out_hi = tuple(ctx.get_tensor_shape(output.name))
            nbytes = int(np.prod(out_hi)) * np.dtype(output.dtype).itemsize
            buffers[output.name] = cuda.mem_alloc(nbytes)
            self._buffer_bytes.append(nbytes)
            ctx.set_tensor_address(output.name, int(buffers[output.name]))
            self._contexts.append(ctx)
            self._device.append(buffers)
        for t in [*inputs, output]:
            size = int(np.prod(max_shape(profiles, t.name))) if t.mode == "input" else self._max_output_elems()
            self._host[t.name] = cuda.pagelocked_empty(size, np.dtype(t.dtype))
        self._stream.synchronize()

    def _max_output_elems(self) -> int:
        return max(self._profiles_max_batch(), 1) * self._num_labels

    def _profiles_max_batch(self) -> int:
        return max(hi[0] for p in self._profiles for _, _, hi in p.shapes.values())

    def predict(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        cuda, stream, ev = self._cuda, self._stream, self._events
        bound = bind_inputs(self._inputs, inputs)
        k = pick_profile(self._profiles, {t.name: a.shape for t, a in bound})
        ctx, buffers = self._contexts[k], self._device[k]
        # Host work first (staging into pinned memory, shapes, the output check), so each event pair
        # below brackets only what it names: the copies in, the engine's kernels, the copy out.
        staged = []
        for t, arr in bound:
            staging = self._host[t.name][: arr.size]
            staging[:] = arr.reshape(-1)
            ctx.set_input_shape(t.name, arr.shape)
            staged.append((buffers[t.name], staging))
        batch = bound[0][1].shape[0]
        check_output_shape(tuple(ctx.get_tensor_shape(self._output.name)), batch, self._num_labels)
        out = self._host[self._output.name][: batch * self._num_labels]
        ev[0].record(stream)
        for device_buffer, staging in staged:
            cuda.memcpy_htod_async(device_buffer, staging, stream)
        ev[1].record(stream)
        ok = ctx.execute_async_v3(stream.handle)
        ev[2].record(stream)
        cuda.memcpy_dtoh_async(out, buffers[self._output.name], stream)
        ev[3].record(stream)
        stream.synchronize()
        if not ok:
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        self._timings.add((ev[1].time_since(ev[0]), ev[2].time_since(ev[1]), ev[3].time_since(ev[2])))
        return out.reshape(batch, self._num_labels).astype(np.float32)

    def device_timing(self, last: int) -> dict[str, list[float]]:
        """CUDA-event times (ms) of the last `last` calls: h2d, compute, d2h."""
        rows = self._timings.rows[-last:]
        return {k: [r[i] for r in rows] for i, k in enumerate(("h2d", "compute", "d2h"))}

    def options(self) -> dict[str, Any]:
        return dict(self._options)

    def allocated_bytes(self) -> int:
        """Device memory this session holds: its I/O buffers plus each context's activation memory."""
        buffers = sum(self._buffer_bytes)
        per_context = getattr(self._engine, "device_memory_size_v2", 0) or getattr(
            self._engine, "device_memory_size", 0
        )
        return int(buffers + per_context * len(self._contexts))

    def device_counters(self) -> Any:
        """GPU memory and energy around a timed loop (see quantmatrix.gpu.DeviceCounters)."""
        from quantmatrix.gpu import DeviceCounters

        peak = self.allocated_bytes()
        return DeviceCounters(self._ordinal, allocator_peak=(lambda: None, lambda: peak))

    def close(self) -> None:
        self._stream.synchronize()
        self._contexts.clear()
        self._device.clear()
        self._host.clear()
        self._engine = None


def _why_not(request: LoadRequest) -> str | None:
    """The first reason this machine cannot run a TensorRT engine, in the order a user fixes them."""
    from quantmatrix.gpu import missing_module, probe_cuda

    for module, package in (("tensorrt", "TensorRT"), ("pycuda", "pycuda")):
        if reason := missing_module(module, package):
            return reason
    p: TensorrtParams = request.params
    probe = probe_cuda(p.device)
    return probe.reason


@runner(
    "tensorrt",
    params=TensorrtParams,
    formats=("tensorrt",),
    devices=("cuda",),
    capabilities={Capability.SCORES_QUALITY},
)
def load(request: LoadRequest) -> TensorrtSession:
    from quantmatrix.gpu import probe_cuda

    if request.device != "cuda":
        raise Skip("TensorRT engines run on CUDA devices only")
    if reason := _why_not(request):
        raise Skip(reason)
    import pycuda.driver as cuda
    import tensorrt as trt

    p: TensorrtParams = request.params
    device = probe_cuda(p.device).device
    assert device is not None  # _why_not returned None
    here = EngineTarget(
        tensorrt_version=trt.__version__, gpu_name=device.name, compute_capability=device.compute_capability
    )
    if mismatch := engine_mismatch(request.manifest.engine or EngineTarget(), here):
        raise Skip(mismatch)
    cuda.init()
    context = cuda.Device(p.device).retain_primary_context()
    context.push()  # TensorRT uses the runtime API, which shares the primary context
    logger = trt.Logger(trt.Logger.WARNING)
    engine_path = request.path / (request.manifest.entry or "model.engine")
    # A serialised engine is TensorRT's own plan format (never a pickle).
    engine = trt.Runtime(logger).deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise Skip(f"TensorRT {trt.__version__} could not deserialise {engine_path.name}: rebuild it on this machine")
    table = read_io_table(engine, trt)
    outputs = [t.name for t in request.manifest.io_outputs]
    inputs, output = split_io(table, "logits" if "logits" in outputs else None)
    profiles = read_profiles(engine, inputs)
    session = TensorrtSession(
        cuda=cuda,
        engine=engine,
        inputs=inputs,
        output=output,
        profiles=profiles,
        num_labels=len(request.manifest.id2label),
        timing_limit=p.max_timing_samples,
        ordinal=p.device,
        options={
            "tensorrt": trt.__version__,
            "gpu": device.name,
            "compute_capability": device.compute_capability,
            "profiles": len(profiles),
            "io": [f"{t.mode}:{t.name}:{t.dtype}:{list(t.shape)}" for t in table],
            "timing": "CUDA events: h2d (input copies only), compute (execute_async_v3 alone), d2h; "
            "latency is host wall time",
        },
    )
    # Free TensorRT and device objects before the context goes, or pycuda aborts at exit.
    atexit.register(_shutdown, session, context)
    return session


def _shutdown(session: TensorrtSession, context: Any) -> None:
    session.close()
    context.pop()
