"""Why a CUDA cell can or cannot run here, asked of the NVIDIA driver directly (ctypes, no torch).

Nothing here runs at import time: `probe_cuda()` loads libcuda and calls cuInit only when a
builder or runner that needs a GPU asks, so importing builders, runners or the report never
touches CUDA. The answer is a precise reason (no driver / no GPU / driver too old ...), which
CUDA cells record as their `skipped` reason.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# CUresult codes whose meaning a user can act on (cuda.h).
_CU_ERRORS = {
    3: "the CUDA driver is not initialised",
    35: "the NVIDIA driver is older than this CUDA runtime needs",
    100: "no NVIDIA GPU visible",
    101: "the CUDA device ordinal is invalid",
    304: "the CUDA driver failed to initialise (OS call failed)",
    802: "the GPU system is not ready (fabric manager not running?)",
    804: "this GPU does not support CUDA forward compatibility with this driver",
    999: "unknown CUDA driver error",
}
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
LIBCUDA = "libcuda.so.1"


@dataclass(frozen=True)
class CudaDevice:
    """The GPU a CUDA cell would run on (device 0 of those CUDA_VISIBLE_DEVICES leaves)."""

    name: str
    compute_capability: str  # "9.0"
    driver_version: str  # CUDA driver API version, "13.0"
    count: int


@dataclass(frozen=True)
class CudaProbe:
    device: CudaDevice | None
    reason: str | None  # why there is no usable device; None when `device` is set


def cuda_error_reason(code: int, call: str) -> str:
    """One line for a failed driver call, with the CUDA_VISIBLE_DEVICES setting when it matters."""
    what = _CU_ERRORS.get(code, f"CUDA driver error {code}")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if code == 100 and visible is not None else ""
    return f"{what}{hint} [{call} returned {code}]"


def _driver_version(lib: ctypes.CDLL) -> str:
    v = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(v)) != 0:
        return "?"
    return f"{v.value // 1000}.{(v.value % 1000) // 10}"


@functools.cache
def probe_cuda(ordinal: int = 0) -> CudaProbe:
    """Ask the driver for GPU `ordinal`: its name and compute capability, or why there is none."""
    try:
        lib = ctypes.CDLL(LIBCUDA)
    except OSError:
        return CudaProbe(None, f"no NVIDIA driver ({LIBCUDA} not found)")
    rc = lib.cuInit(0)
    if rc != 0:
        return CudaProbe(None, cuda_error_reason(rc, "cuInit"))
    count = ctypes.c_int(0)
    rc = lib.cuDeviceGetCount(ctypes.byref(count))
    if rc != 0:
        return CudaProbe(None, cuda_error_reason(rc, "cuDeviceGetCount"))
    if count.value <= ordinal:
        return CudaProbe(None, cuda_error_reason(100, "cuDeviceGetCount"))
    dev = ctypes.c_int(0)
    rc = lib.cuDeviceGet(ctypes.byref(dev), ordinal)
    if rc != 0:
        return CudaProbe(None, cuda_error_reason(rc, "cuDeviceGet"))
    name = ctypes.create_string_buffer(256)
    lib.cuDeviceGetName(name, len(name), dev)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    lib.cuDeviceGetAttribute(ctypes.byref(major), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
    lib.cuDeviceGetAttribute(ctypes.byref(minor), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)
    return CudaProbe(
        CudaDevice(
            name=name.value.decode(errors="replace"),
            compute_capability=f"{major.value}.{minor.value}",
            driver_version=_driver_version(lib),
            count=count.value,
        ),
        None,
    )


def missing_module(module: str, package: str | None = None) -> str | None:
    """'<package> not installed' when `module` cannot be imported, without importing it."""
    if importlib.util.find_spec(module) is None:
        return f"{package or module} not installed"
    return None


def tensorrt_version() -> str | None:
    """The installed TensorRT's version from its distribution metadata (no import, no CUDA)."""
    from importlib import metadata

    for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_cu13_libs", "tensorrt-cu13-libs"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def preload_onnxruntime(ort: Any) -> str:
    """onnxruntime.preload_dlls(): CUDA/cuDNN from the nvidia-* wheels, which are not on the loader path
    outside the image. Returns what it printed (it reports failures on stdout)."""
    preload: Callable[..., Any] | None = getattr(ort, "preload_dlls", None)
    if preload is None:
        return "onnxruntime.preload_dlls is missing (onnxruntime < 1.21)"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            preload()
        except Exception as e:
            print(f"preload_dlls: {e}")
    return " ".join(out.getvalue().split())


# -- GPU memory and energy over a timed loop (NVML through ctypes: no nvidia-ml-py needed) ----------

LIBNVML = "libnvidia-ml.so.1"
_NVML_ERRORS = {1: "NVML is not initialised", 2: "invalid argument", 3: "not supported on this GPU", 4: "no permission"}


class _NvmlMemory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


def nvml_error(code: int, call: str) -> str:
    return f"{_NVML_ERRORS.get(code, f'NVML error {code}')} [{call} returned {code}]"


def energy_figures(
    start_mj: int, end_mj: int, window_s: float, calls: int
) -> tuple[float | None, float | None, float | None, str | None]:
    """(joules, joules per call, average watts, reason) from two readings of NVML's millijoule counter."""
    if calls <= 0 or window_s <= 0:
        return None, None, None, f"no timed calls to divide by ({calls} calls over {window_s:.3f} s)"
    if end_mj < start_mj:
        return None, None, None, f"the energy counter went backwards ({start_mj} -> {end_mj} mJ): driver reset?"
    joules = (end_mj - start_mj) / 1e3
    if joules == 0:
        return None, None, None, f"the energy counter did not move over {window_s:.3f} s (updated too rarely)"
    return joules, joules / calls, joules / window_s, None


class _Nvml:
    """The NVML handle of the GPU that CUDA calls `ordinal` (matched by PCI bus id, so CUDA_VISIBLE_DEVICES holds)."""

    def __init__(self, ordinal: int) -> None:
        self.lib = ctypes.CDLL(LIBNVML)
        if (rc := self.lib.nvmlInit_v2()) != 0:
            raise OSError(nvml_error(rc, "nvmlInit_v2"))
        cuda = ctypes.CDLL(LIBCUDA)
        dev = ctypes.c_int(0)
        bus = ctypes.create_string_buffer(64)
        if cuda.cuInit(0) != 0 or cuda.cuDeviceGet(ctypes.byref(dev), ordinal) != 0:
            raise OSError(f"CUDA device {ordinal} not found")
        if (rc := cuda.cuDeviceGetPCIBusId(bus, len(bus), dev)) != 0:
            raise OSError(cuda_error_reason(rc, "cuDeviceGetPCIBusId"))
        self.handle = ctypes.c_void_p()
        if (rc := self.lib.nvmlDeviceGetHandleByPciBusId_v2(bus, ctypes.byref(self.handle))) != 0:
            raise OSError(nvml_error(rc, "nvmlDeviceGetHandleByPciBusId_v2"))

    def used_bytes(self) -> tuple[int, int]:
        mem = _NvmlMemory()
        if (rc := self.lib.nvmlDeviceGetMemoryInfo(self.handle, ctypes.byref(mem))) != 0:
            raise OSError(nvml_error(rc, "nvmlDeviceGetMemoryInfo"))
        return int(mem.used), int(mem.total)

    def energy_mj(self) -> int:
        mj = ctypes.c_ulonglong(0)
        if (rc := self.lib.nvmlDeviceGetTotalEnergyConsumption(self.handle, ctypes.byref(mj))) != 0:
            raise OSError(nvml_error(rc, "nvmlDeviceGetTotalEnergyConsumption"))
        return int(mj.value)


class DeviceCounters:
    """GPU memory and energy around one timed loop: `start()` right before it, `stop(calls)` right after.

    `allocator_peak` (reset, read) are the backend's own allocator counters (None: the backend has
    none, `allocator_reason` says why). NVML readings are null with the reason when NVML, the GPU
    or its energy counter is unavailable; nothing here ever raises into the timed loop.
    """

    def __init__(
        self,
        ordinal: int = 0,
        allocator_peak: tuple[Callable[[], None], Callable[[], int]] | None = None,
        allocator_reason: str | None = None,
    ) -> None:
        self._allocator = allocator_peak
        self._allocator_reason = allocator_reason or (None if allocator_peak else "no allocator counter")
        self._nvml: _Nvml | None = None
        self._nvml_reason: str | None = None
        try:
            self._nvml = _Nvml(ordinal)
        except OSError as e:
            self._nvml_reason = f"no NVML ({LIBNVML} not found)" if LIBNVML in str(e) else str(e)
        self._t0 = 0.0
        self._e0: int | None = None
        self._energy_reason: str | None = None
        self._used: list[int] = []
        self._total: int | None = None
        self._memory_reason: str | None = None

    def _read_memory(self) -> None:
        if self._nvml is None:
            return
        try:
            used, self._total = self._nvml.used_bytes()
            self._used.append(used)
        except OSError as e:
            self._memory_reason = str(e)

    def start(self) -> None:
        if self._allocator is not None:
            self._allocator[0]()
        self._read_memory()
        if self._nvml is not None:
            try:
                self._e0 = self._nvml.energy_mj()
            except OSError as e:
                self._energy_reason = str(e)
        self._t0 = time.perf_counter()

    def stop(self, calls: int) -> dict[str, Any]:
        """The GpuCounters record's fields (quantmatrix.records.GpuCounters)."""
        window = time.perf_counter() - self._t0
        e1: int | None = None
        if self._nvml is not None and self._e0 is not None:
            try:
                e1 = self._nvml.energy_mj()
            except OSError as e:
                self._energy_reason = str(e)
        self._read_memory()
        joules = per_call = watts = None
        reason = self._nvml_reason or self._energy_reason
        if reason is None and self._e0 is not None and e1 is not None:
            joules, per_call, watts, reason = energy_figures(self._e0, e1, window, calls)
        peak = self._allocator[1]() if self._allocator is not None else None
        return {
            "allocator_peak_bytes": peak,
            "allocator_reason": None if peak is not None else self._allocator_reason,
            "device_used_bytes": max(self._used) if self._used else None,
            "device_total_bytes": self._total,
            "memory_reason": None if self._used else (self._nvml_reason or self._memory_reason),
            "energy_j": joules,
            "joules_per_inference": per_call,
            "average_watts": watts,
            "window_s": round(window, 6),
            "calls": calls,
            "energy_reason": reason,
        }
