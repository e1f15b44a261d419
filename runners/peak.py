"""This machine's measured GEMM peak (FP32 and INT8 ops/s), the roof for the roofline chart.

FP32 uses torch.mm (MKL/oneDNN); INT8 uses ONNX Runtime's MatMulInteger, the fastest INT8 GEMM
reachable on CPU here (torch._int_mm has no fast CPU kernel). Cached per machine in a JSON file.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from quantmatrix.machine_lock import LoadWindow, TimingLock
from quantmatrix.records import atomic_write_text

Log = Callable[[str], None]

SIZE = 1024
SECONDS = 1.0


def _rate(fn: Callable[[], object], ops: float, seconds: float = SECONDS) -> float:
    fn()
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        best = max(best, ops / (time.perf_counter() - t0))
    return best


def fp32_peak(n: int = SIZE) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    return _rate(lambda: torch.mm(a, b), 2.0 * n**3)


def int8_peak(n: int = SIZE) -> float:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])],
        "gemm",
        [
            helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
            helper.make_tensor_value_info("b", TensorProto.INT8, [n, n]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8), "b": rng.integers(-127, 127, (n, n), dtype=np.int8)}
    return _rate(lambda: sess.run(None, feed), 2.0 * n**3)


def _cached(path: Path) -> dict[str, float] | None:
    if not path.is_file():
        return None
    try:
        return {k: float(v) for k, v in json.loads(path.read_text()).items()}
    except (ValueError, AttributeError):
        return None


def machine_peak(
    cache_dir: Path, machine_id: str, lock: TimingLock | None = None, *, measure: bool = True, log: Log = print
) -> dict[str, float]:
    """{'fp32': ops/s, 'int8': ops/s}, measured once per machine and cached; {} when not known yet.

    Measured holding the machine-wide timing turn (`lock`), and cached only when no other work took more
    than the disturbed share of the cores meanwhile: a roof measured beside ten loading jobs came out 10x
    low once, and every roofline after it read 400-1000% of "peak". `measure=False` (a job that cannot
    have the machine to itself now) only reads the cache.
    """
    path = cache_dir / f"peak-v2-{machine_id}.json"
    cached = _cached(path)
    if cached is not None or not measure:
        return cached or {}
    peaks: dict[str, float] = {}
    with lock.turn() if lock is not None else contextlib.nullcontext():
        cached = _cached(path)  # measured by another job while this one waited for the turn
        if cached is not None:
            return cached
        window = LoadWindow()
        for kind, fn in (("fp32", fp32_peak), ("int8", int8_peak)):
            try:
                peaks[kind] = fn()
            except ImportError:
                continue
        load = window.stop()
    if load is not None and load.disturbed:
        log(f"[peak  ] GEMM peak not kept: other work took {load.background_cores:.2f} of {load.cores} cores meanwhile")
        return {}
    atomic_write_text(path, json.dumps(peaks, indent=2))
    return peaks
