"""Hardware and software fingerprint of the machine a job runs on.

Reads /proc, importlib.metadata, git and nvidia-smi; never imports torch or initialises CUDA.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Literal

from quantmatrix.records import Fingerprint

# ISA features that decide which INT8/FP16 kernels a CPU can use.
ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "sve",
    "i8mm",
)

KEY_PACKAGES = (
    "torch",
    "torchao",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "openvino",
    "nncf",
    "optimum",
    "optimum-onnx",
    "transformers",
    "peft",
    "tokenizers",
    "numpy",
    "tensorrt",
    "pycuda",
    "bitsandbytes",
    "quantmatrix",
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if not line.strip():
            break  # first processor block is enough
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return info


def cpu_model() -> str:
    info = _cpuinfo()
    return info.get("model name") or info.get("Hardware") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return [f for f in ISA_FLAGS if f in flags]


def physical_cores() -> int | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    pairs = set()
    phys = core = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            phys = value.strip()
        elif key == "core id":
            core = value.strip()
        elif not line.strip():
            if core is not None:
                pairs.add((phys, core))
            phys = core = None
    if core is not None:
        pairs.add((phys, core))
    return len(pairs) or None


def usable_cores() -> int:
    """Cores this process may run on (cpuset aware, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def ram_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def package_versions(names: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(root: Path = REPO_ROOT) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout, or as a container is told (QUANTMATRIX_GIT_COMMIT, QUANTMATRIX_GIT_DIRTY)."""
    baked = os.environ.get("QUANTMATRIX_GIT_COMMIT")
    if baked:
        told = os.environ.get("QUANTMATRIX_GIT_DIRTY")
        return baked, None if told is None else told == "1"
    if not shutil.which("git"):
        return None, None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            != ""
        )
        return commit or None, dirty
    except (subprocess.SubprocessError, OSError):
        return None, None


def git_commit_date(commit: str | None, root: Path = REPO_ROOT) -> str | None:
    """Committer date (ISO 8601) of `commit`, so a history orders runs by commit, not by when they ran."""
    baked = os.environ.get("QUANTMATRIX_GIT_COMMIT_DATE")
    if baked:
        return baked
    if not commit or not shutil.which("git"):
        return None
    try:
        out = subprocess.run(
            ["git", "show", "-s", "--format=%cI", commit], cwd=root, capture_output=True, text=True, timeout=5
        )
    except (subprocess.SubprocessError, OSError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def gpu_info() -> dict[str, str | None]:
    """Name, driver, CUDA version and compute capability from nvidia-smi, without touching CUDA."""
    empty: dict[str, str | None] = {
        "gpu_name": None,
        "gpu_driver": None,
        "cuda_version": None,
        "compute_capability": None,
    }
    smi = shutil.which("nvidia-smi")
    if not smi:
        return empty
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        header = subprocess.run([smi], capture_output=True, text=True, timeout=10).stdout
    except (subprocess.SubprocessError, OSError):
        return empty
    first = out.strip().splitlines()[0] if out.strip() else ""
    parts = [p.strip() for p in first.split(",")]
    cuda = None
    if "CUDA Version:" in header:
        cuda = header.split("CUDA Version:")[1].split()[0].strip("|")
    return {
        "gpu_name": parts[0] if parts else None,
        "gpu_driver": parts[1] if len(parts) > 1 else None,
        "cuda_version": cuda,
        "compute_capability": parts[2] if len(parts) > 2 else None,
    }


@functools.cache
def fingerprint(image: str | None = None, runtime: str = "local") -> Fingerprint:
    gpu = gpu_info()
    commit, dirty = git_commit()
    cores = usable_cores()
    ram = ram_bytes()
    model = cpu_model()
    machine = hashlib.sha256(f"{model}|{os.cpu_count()}|{ram // 2**30}|{gpu['gpu_name']}".encode()).hexdigest()
    packages = package_versions()
    return Fingerprint(
        hostname_hash=hashlib.sha256(socket.gethostname().encode()).hexdigest()[:12],
        machine_id=machine[:12],
        cpu_model=model,
        cpu_cores_logical=cores,
        cpu_cores_physical=physical_cores(),
        cpu_flags=cpu_flags(),
        ram_bytes=ram,
        os=f"{platform.system()} {platform.release()} ({platform.machine()})",
        python=platform.python_version(),
        packages=packages,
        git_commit=commit,
        git_dirty=dirty,
        git_commit_date=git_commit_date(commit),
        tensorrt_version=packages.get("tensorrt"),
        image=image or os.environ.get("QUANTMATRIX_IMAGE"),
        runtime=_runtime(runtime),
        **gpu,
    )


def describe(fp: Fingerprint) -> str:
    """One line for logs: 'Intel Xeon ... (2 cores, avx2 avx512_vnni), 24 GiB, no GPU'."""
    gpu = f"{fp.gpu_name} (driver {fp.gpu_driver}, CUDA {fp.cuda_version})" if fp.gpu_name else "no GPU"
    flags = " ".join(f for f in fp.cpu_flags if f.startswith(("avx", "amx")))
    return f"{fp.cpu_model} ({fp.cpu_cores_logical} cores, {flags or 'no AVX'}), {fp.ram_bytes / 2**30:.0f} GiB, {gpu}"


# Set by the launcher (bench) to its wall clock just before it starts a job's process or container.
LAUNCHED_AT_ENV = "QUANTMATRIX_LAUNCHED_AT"


def launched_at() -> float | None:
    """When the launcher started this job (seconds since the epoch), if it said so."""
    try:
        return float(os.environ[LAUNCHED_AT_ENV])
    except (KeyError, ValueError):
        return None


def _runtime(default: str) -> Literal["docker", "venv", "local"]:
    """How this process was launched: the launcher says so in QUANTMATRIX_RUNTIME."""
    value = os.environ.get("QUANTMATRIX_RUNTIME", default)
    if value == "docker":
        return "docker"
    return "venv" if value == "venv" else "local"


def cpu_busy_seconds() -> float | None:
    """CPU time every process on this machine has used since boot, in seconds (Linux /proc/stat), or None.

    With this process's own CPU time subtracted, the difference over an interval says how much of the
    machine other work took while that interval was measured.
    """
    try:
        fields = Path("/proc/stat").read_text(encoding="ascii").split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal ...: busy is everything but idle and iowait.
    ticks = [int(v) for v in fields[1:]]
    busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)
    return busy / os.sysconf("SC_CLK_TCK")


def speed_probe_ms(repeats: int = 3) -> float:
    """Milliseconds for a fixed single-thread workload (interpreter loop + small float32 matmuls), best of
    `repeats`: a yardstick of how fast this machine runs right now, to tell a VM's drift from a variant's."""
    import numpy as np

    a = np.linspace(0.0, 1.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        acc = 0
        for i in range(60_000):
            acc += i & 7
        b = a
        for _ in range(200):
            b = (b @ a) * np.float32(0.01)
        best = min(best, (time.perf_counter_ns() - t0) / 1e6)
    return round(best, 4)


def memory_bandwidth_gbs(mib: int = 64, seconds: float = 0.1) -> float:
    """GB/s of a single-thread copy of `mib` MiB (bytes read + written), the median over `seconds`.

    The buffers are far larger than a core's caches, so this measures the path to memory that a
    batch-1 forward pass streams its weights over. On a VM that path is shared with the host's other
    tenants: its bandwidth can move by tens of percent from one second to the next while the guest
    sees no steal time and the compute probe stays flat.
    """
    import numpy as np

    src = np.ones(mib * 2**20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # touch every page once, outside the timing
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < end:
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return round(2 * src.nbytes / statistics.median(times) / 1e9, 2)


def memory_bandwidth_forked_gbs(timeout: float = 10.0) -> float | None:
    """`memory_bandwidth_gbs` in a forked child, so its buffers never count in this process's peak RSS.

    None where there is no fork (not POSIX), no child could be made, or it gives no answer within `timeout`
    seconds.
    """
    if not hasattr(os, "fork"):
        return None
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError:  # no memory or process slots for a child: the loop is still timed, without this probe
        os.close(r)
        os.close(w)
        return None
    if pid == 0:  # the child: measure, answer, and leave without running the parent's exit handlers
        code = 1
        try:
            os.close(r)
            os.write(w, repr(memory_bandwidth_gbs()).encode("ascii"))
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    try:
        if select.select([r], [], [], timeout)[0]:
            data = os.read(r, 64)
    finally:
        os.close(r)
        if not data:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    try:
        return float(data)
    except ValueError:
        return None


def machine_noise(seconds: int, log: Callable[[str], None] = print) -> dict[str, float]:
    """Probe this machine once a second for `seconds`: memory bandwidth and the per-CPU speed probe.

    What the timed loops record around themselves, taken back to back with nothing else timed:
    how far these move over half a minute is about how far one cell's rounds can move on this
    machine, whatever is being benchmarked. Returns each series' max/min.
    """
    bandwidth: list[float] = []
    probes: list[float] = []
    for second in range(1, seconds + 1):
        t_end = time.perf_counter() + 1.0
        cpus = speed_probe_per_cpu_ms()
        gbs = memory_bandwidth_gbs(seconds=max(0.05, t_end - time.perf_counter() - 0.05))
        bandwidth.append(gbs)
        probes.append(max(cpus))
        log(f"{second:4d}s  memory {gbs:6.2f} GB/s  speed probe " + " ".join(f"{ms:.2f}" for ms in cpus) + " ms")
        time.sleep(max(0.0, t_end - time.perf_counter()))
    return {"bandwidth_spread": max(bandwidth) / min(bandwidth), "probe_spread": max(probes) / min(probes)}


def speed_probe_per_cpu_ms() -> list[float]:
    """`speed_probe_ms` on each CPU this process may use, in CPU order (this thread pinned to each in turn).

    A multi-threaded backend waits at every barrier for its slowest core; a VM whose vCPUs run at
    different speeds shows here as one slow entry, which a single-core probe can miss.
    """
    saved = os.sched_getaffinity(0)
    out = []
    try:
        for cpu in sorted(saved):
            os.sched_setaffinity(0, {cpu})
            out.append(speed_probe_ms())
    finally:
        os.sched_setaffinity(0, saved)
    return out
