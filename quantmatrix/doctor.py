"""`python -m quantmatrix doctor`: which GPU libraries load here, and what is missing.

One line per component (NVIDIA driver, NVML, PyTorch's CUDA build, pycuda's extension, TensorRT,
ONNX Runtime's CUDA and TensorRT provider libraries, bitsandbytes' CUDA library). Each library is
really loaded (dlopen), and every shared library it needs that the loader cannot find is listed, so
a wheel whose dependency is off the loader path shows up here, not as a silent CPU fallback in a
benchmark. Statuses: `ok`; `no-driver` (everything installed loads; only the NVIDIA driver / a GPU
is missing); `not-installed`; `failed` (something installed does not load: the exit status is 1).
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from quantmatrix.errors import QuantmatrixError

Status = Literal["ok", "no-driver", "not-installed", "failed"]

# Libraries only the NVIDIA driver provides (the container runtime mounts them on GPU hosts).
DRIVER_LIBS = ("libcuda.so", "libnvidia-ml.so")
# Libraries only a TensorRT install provides (a build argument of the CUDA image).
TENSORRT_LIBS = ("libnvinfer", "libnvonnxparser")
LIBNVML = "libnvidia-ml.so.1"
DOCTOR_VERSION = 1


@dataclass
class Component:
    name: str
    status: Status
    version: str | None = None
    detail: str = ""
    missing: list[str] = field(default_factory=list)  # shared libraries the loader could not find


def classify_missing(missing: Iterable[str], tensorrt_installed: bool) -> tuple[Status, str]:
    """What unresolved shared libraries mean: only the driver's -> no-driver; TensorRT's while it
    is not installed -> not-installed; anything else (a wheel off the loader path) -> failed."""
    libs = sorted(set(missing))
    driver = [m for m in libs if m.startswith(DRIVER_LIBS)]
    trt = [m for m in libs if m.startswith(TENSORRT_LIBS)]
    other = [m for m in libs if m not in driver and m not in trt]
    if other or (trt and tensorrt_installed):
        return "failed", "cannot find " + ", ".join(other + (trt if tensorrt_installed else []))
    if trt:
        return "not-installed", "needs TensorRT (not installed): " + ", ".join(trt)
    if driver:
        return "no-driver", "loads; needs the NVIDIA driver's " + ", ".join(driver)
    return "ok", "loads"


def unresolved(path: Path) -> list[str]:
    """Shared libraries `path` needs that neither the loader path nor this process provides (ldd)."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return []
    out = subprocess.run([ldd, str(path)], capture_output=True, text=True).stdout
    wanted = re.findall(r"^\s*(\S+) => not found", out, flags=re.MULTILINE)
    # Libraries preloaded by full path (onnxruntime.preload_dlls) satisfy a soname although ldd cannot see them.
    maps = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""
    return [w for w in wanted if f"/{w}" not in maps]


def check_library(name: str, path: Path, tensorrt_installed: bool, version: str | None = None) -> Component:
    """dlopen `path`; name every library it is missing and what that means."""
    error = None
    try:
        ctypes.CDLL(str(path))
    except OSError as e:
        error = str(e)
    missing = unresolved(path)
    if error is not None and not missing:  # ldd missing, or a failure that is not a missing library
        found = re.match(r"(\S+?\.so[.\d]*): cannot open shared object file", error)
        missing = [found.group(1)] if found else []
        if not missing:
            return Component(name, "failed", version, f"{path.name}: {error}")
    status, detail = classify_missing(missing, tensorrt_installed)
    return Component(name, status, version, f"{path.name}: {detail}", sorted(set(missing)))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def driver() -> Component:
    from quantmatrix.gpu import probe_cuda

    probe = probe_cuda()
    if probe.device is None:
        return Component("nvidia-driver", "no-driver", None, probe.reason or "no GPU")
    d = probe.device
    return Component(
        "nvidia-driver",
        "ok",
        d.driver_version,
        f"{d.count} GPU(s); device 0: {d.name}, compute capability {d.compute_capability}",
    )


def nvml() -> Component:
    try:
        lib = ctypes.CDLL(LIBNVML)
    except OSError:
        return Component("nvml", "no-driver", None, f"{LIBNVML} not found (comes with the NVIDIA driver)")
    rc = lib.nvmlInit_v2()
    if rc != 0:
        return Component("nvml", "failed", None, f"nvmlInit_v2 returned {rc}")
    buf = ctypes.create_string_buffer(80)
    lib.nvmlSystemGetDriverVersion(buf, len(buf))
    lib.nvmlShutdown()
    return Component("nvml", "ok", buf.value.decode(errors="replace"), "initialised")


def torch_cuda() -> Component:
    if not _installed("torch"):
        return Component("torch", "not-installed", None, "PyTorch not installed")
    try:
        import torch
    except Exception as e:  # a broken CUDA build fails here with the missing library's name
        return Component("torch", "failed", None, f"import torch: {e}")
    if torch.version.cuda is None:
        return Component("torch", "not-installed", torch.__version__, "a CPU-only build of PyTorch (no CUDA)")
    maps = Path("/proc/self/maps").read_text()
    if "libtorch_cuda.so" not in maps:
        return Component("torch", "failed", torch.__version__, "libtorch_cuda.so was not loaded by import torch")
    try:
        cudnn = torch.backends.cudnn.version()
    except Exception as e:
        return Component("torch", "failed", torch.__version__, f"cuDNN does not load: {e}")
    built = f"CUDA {torch.version.cuda}, cuDNN {cudnn}"
    if torch.cuda.is_available():
        return Component("torch", "ok", torch.__version__, f"{built}; {torch.cuda.get_device_name()}")
    return Component("torch", "no-driver", torch.__version__, f"{built} load; torch.cuda.is_available() is False")


def package_files(package: str, pattern: str, version: str | None) -> list[Path] | Component:
    """The installed package's files matching `pattern`, or the Component that says why there are none."""
    root = _package_dir(package)
    if root is None:
        return Component(package, "not-installed", None, f"{package} not installed")
    found = sorted(root.glob(pattern))
    return found or Component(package, "failed", version, f"no {pattern} in {root}")


def pycuda(tensorrt_installed: bool) -> Component:
    ext = package_files("pycuda", "_driver*.so", None)
    if isinstance(ext, Component):
        return ext
    c = check_library("pycuda", ext[0], tensorrt_installed, _version("pycuda"))
    if c.status == "ok":
        try:
            import pycuda.driver as cuda

            cuda.init()
            c.detail = f"{ext[0].name}: loads; {cuda.Device.count()} device(s)"
        except Exception as e:
            c.status, c.detail = "failed", f"pycuda.driver.init(): {e}"
    return c


def tensorrt() -> Component:
    if not _installed("tensorrt"):
        return Component("tensorrt", "not-installed", None, "TensorRT not installed (a build argument of the image)")
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as e:
        return Component("tensorrt", "failed", None, f"import tensorrt: {e}")
    return Component("tensorrt", "ok", trt.__version__, "libnvinfer loads")


def onnxruntime_providers(tensorrt_installed: bool) -> list[Component]:
    root = _package_dir("onnxruntime")
    if root is None:
        return [Component(f"onnxruntime-{p}", "not-installed", None, "onnxruntime not installed") for p in EPS]
    from quantmatrix.gpu import preload_onnxruntime

    ort = importlib.import_module("onnxruntime")
    printed = preload_onnxruntime(ort)
    available = ort.get_available_providers()
    comps = []
    for short, provider in EPS.items():
        name = f"onnxruntime-{short}"
        lib = root / "capi" / f"libonnxruntime_providers_{short}.so"
        if provider not in available or not lib.is_file():
            why = f"{provider} not in this build ({', '.join(available)}): onnxruntime-gpu provides it"
            comps.append(Component(name, "not-installed", ort.__version__, why))
            continue
        c = check_library(name, lib, tensorrt_installed, ort.__version__)
        if printed and c.status == "failed":
            c.detail += f" (preload_dlls: {printed})"
        comps.append(c)
    return comps


EPS = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def bitsandbytes(tensorrt_installed: bool) -> Component:
    libs = package_files("bitsandbytes", "libbitsandbytes_cuda*.so", _version("bitsandbytes"))
    if isinstance(libs, Component):
        return libs
    # One library per CUDA version: the one matching torch's CUDA build is what bitsandbytes loads.
    torch = sys.modules.get("torch")
    cuda = getattr(getattr(torch, "version", None), "cuda", None)
    match = [p for p in libs if cuda and p.name == f"libbitsandbytes_cuda{cuda.replace('.', '')}.so"]
    return check_library("bitsandbytes", (match or libs)[-1], tensorrt_installed, _version("bitsandbytes"))


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def diagnose() -> list[Component]:
    """Every component, in the order a user fixes them (driver first)."""
    trt = _installed("tensorrt")
    return [
        driver(),
        nvml(),
        torch_cuda(),
        pycuda(trt),
        tensorrt(),
        *onnxruntime_providers(trt),
        bitsandbytes(trt),
    ]


def report(components: list[Component], expect_installed: Iterable[str] = ()) -> dict[str, Any]:
    """The doctor's JSON. A component named in `expect_installed` that is absent counts as failed:
    an image that should carry it was built without it."""
    by_name = {c.name: c for c in components}
    unknown = sorted(set(expect_installed) - set(by_name))
    if unknown:
        raise QuantmatrixError(f"--expect-installed: unknown components {unknown} (known: {sorted(by_name)})")
    for name in expect_installed:
        c = by_name[name]
        if c.status == "not-installed":
            c.status, c.detail = "failed", f"expected installed: {c.detail}"
    failed = [c.name for c in components if c.status == "failed"]
    return {
        "doctor_version": DOCTOR_VERSION,
        "ok": not failed,
        "gpu_ready": all(c.status in ("ok", "not-installed") for c in components),
        "failed": failed,
        "components": [asdict(c) for c in components],
    }


def render(components: list[Component]) -> str:
    width = max(len(c.name) for c in components)
    lines = [f"{c.name:<{width}}  {c.status:<13}  {c.version or '-':<14}  {c.detail}" for c in components]
    return "\n".join(lines)


def main(as_json: bool, require_gpu: bool, expect_installed: Iterable[str] = ()) -> int:
    components = diagnose()
    out = report(components, expect_installed)
    print(json.dumps(out, indent=2) if as_json else render(components))
    if not out["ok"]:
        return 1
    return 0 if out["gpu_ready"] or not require_gpu else 3
