"""Why a CUDA cell can or cannot run here, asked of the NVIDIA driver directly (ctypes, no torch).

Nothing here runs at import time: `probe_cuda()` loads libcuda and calls cuInit only when a
builder or runner that needs a GPU asks, so importing builders, runners or the report never
touches CUDA. The answer is a precise reason (no driver / no GPU / driver too old ...), which
CUDA cells record as their `skipped` reason.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
from dataclasses import dataclass

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
