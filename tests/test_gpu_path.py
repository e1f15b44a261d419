"""The GPU path's parts that a CPU proves: provider options per precision, the provider check after
session creation (real CPU onnxruntime), the doctor's library checks (real shared libraries built with
gcc), the libcuda link stub, TensorRT's build log and inspector parsing, CUDA event placement, and
GPU memory/energy counters without NVML. `gpu`-marked tests at the end run on a GPU host and need
neither optimum nor the packaged model (scripts/gpu_check.sh runs them)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from builders.tensorrt_engine import BuildLog, layer_precisions
from quantmatrix.doctor import check_library, classify_missing
from quantmatrix.errors import QuantmatrixError
from quantmatrix.gpu import DeviceCounters, energy_figures, probe_cuda
from quantmatrix.records import GpuCounters, Result
from runners import Skip
from runners.backends.onnxruntime import create_session, provider_config
from runners.backends.tensorrt import EngineTensor, ProfileRange, TensorrtSession

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
NAMES = ["input_ids", "attention_mask", "token_type_ids"]
NO_GPU = probe_cuda().reason
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build shared libraries")


# -- ONNX Runtime provider options per precision ---------------------------------------------------


def _options(provider: str, precision: str) -> tuple[dict[str, Any], dict[str, str], str]:
    providers, effective = provider_config(provider, precision, NAMES, max_batch=32, max_seq=128, cache_dir="/c")
    by_name = {p[0]: p[1] for p in providers if isinstance(p, tuple)}
    return by_name.get("TensorrtExecutionProvider", {}), by_name["CUDAExecutionProvider"], effective


def test_cuda_ep_runs_fp32_without_tf32() -> None:
    providers, effective = provider_config("cuda", "fp32", NAMES, max_batch=32, max_seq=128, cache_dir="/c")
    assert providers == [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    assert effective == "fp32 (TF32 off)"


@pytest.mark.parametrize(
    ("precision", "fp16", "int8"), [("fp32", "False", "False"), ("fp16", "True", "False"), ("int8", "False", "True")]
)
def test_tensorrt_ep_precision_flags_follow_the_artefact(precision: str, fp16: str, int8: str) -> None:
    trt, cuda, effective = _options("tensorrt", precision)
    assert (trt["trt_fp16_enable"], trt["trt_int8_enable"]) == (fp16, int8)
    assert cuda == {"use_tf32": "0"}  # nodes TensorRT leaves to the CUDA EP stay FP32 too
    assert precision in effective


def test_tensorrt_ep_gets_one_profile_and_an_engine_cache() -> None:
    trt, _, _ = _options("tensorrt", "fp16")
    assert trt["trt_profile_min_shapes"] == "input_ids:1x1,attention_mask:1x1,token_type_ids:1x1"
    assert trt["trt_profile_max_shapes"] == "input_ids:32x128,attention_mask:32x128,token_type_ids:32x128"
    assert trt["trt_profile_opt_shapes"] == trt["trt_profile_max_shapes"]
    assert trt["trt_engine_cache_enable"] == "True" and trt["trt_engine_cache_path"] == "/c"


def test_provider_config_refuses_what_it_cannot_label() -> None:
    assert provider_config("cpu", "int8", NAMES, max_batch=1, max_seq=1, cache_dir="") == (
        ["CPUExecutionProvider"],
        "int8",
    )
    with pytest.raises(ValueError, match="precision 'bf16'"):
        provider_config("cuda", "bf16", NAMES, max_batch=32, max_seq=128, cache_dir="/c")
    with pytest.raises(ValueError, match="positive"):
        provider_config("tensorrt", "fp16", NAMES, max_batch=0, max_seq=128, cache_dir="/c")


def _matmul(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 2), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save_model(model, str(path))


def test_a_session_that_fell_back_to_cpu_is_skipped_not_timed(tmp_path: Path) -> None:
    """This onnxruntime is the CPU build: asking for the CUDA EP gives a CPU session, which must not be timed."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA EP")
    _matmul(tmp_path / "m.onnx")
    providers, _ = provider_config("cuda", "fp32", ["x"], max_batch=1, max_seq=1, cache_dir="")
    with pytest.raises(Skip, match=r"CUDAExecutionProvider is not running this session .*\['CPUExecutionProvider'\]"):
        create_session(ort, tmp_path / "m.onnx", ort.SessionOptions(), providers)
    session = create_session(ort, tmp_path / "m.onnx", ort.SessionOptions(), ["CPUExecutionProvider"])
    assert session.run(None, {"x": np.ones((1, 4), dtype=np.float32)})[0].tolist() == [[4.0, 4.0]]


# -- the doctor: real shared libraries, real dlopen -------------------------------------------------


def test_missing_libraries_are_classified() -> None:
    assert classify_missing([], False) == ("ok", "loads")
    assert classify_missing(["libcuda.so.1"], False)[0] == "no-driver"
    assert classify_missing(["libcuda.so.1", "libnvidia-ml.so.1"], True)[0] == "no-driver"
    assert classify_missing(["libnvinfer.so.10", "libcuda.so.1"], False) == (
        "not-installed",
        "needs TensorRT (not installed): libnvinfer.so.10",
    )
    status, detail = classify_missing(["libnvinfer.so.10"], True)  # installed but off the loader path
    assert status == "failed" and "libnvinfer.so.10" in detail
    status, detail = classify_missing(["libcublasLt.so.13", "libcuda.so.1"], False)
    assert status == "failed" and detail == "cannot find libcublasLt.so.13"


def _shared(tmp: Path, name: str, needs: list[str]) -> Path:
    """lib<name>.so that links the stub libraries `needs` (built in tmp/stubs, not on the loader path)."""
    stubs = tmp / "stubs"
    stubs.mkdir(exist_ok=True)
    flags = []
    for soname in needs:
        base = soname.split(".so")[0]
        stub = stubs / f"{base}.so"
        src = stubs / f"{base}.c"
        src.write_text(f"int {base[3:]}_fn(void) {{ return 1; }}\n")
        subprocess.run(["gcc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(stub), str(src)], check=True)
        flags.append(f"-l{base[3:]}")
    src = tmp / f"{name}.c"
    src.write_text("".join(f"int {n.split('.so')[0][3:]}_fn(void);\n" for n in needs) + "int use(void) { return 0; }\n")
    out = tmp / f"lib{name}.so"
    cmd = ["gcc", "-shared", "-fPIC", "-Wl,--no-as-needed", "-o", str(out), str(src), f"-L{stubs}", *flags]
    subprocess.run(cmd, check=True)
    return out


@needs_gcc
def test_doctor_loads_libraries_and_names_what_they_miss(tmp_path: Path) -> None:
    ok = check_library("plain", _shared(tmp_path, "plain", []), tensorrt_installed=False)
    assert (ok.status, ok.missing) == ("ok", [])
    drv = check_library("pycuda", _shared(tmp_path, "drv", ["libcuda.so.1"]), tensorrt_installed=False)
    assert (drv.status, drv.missing) == ("no-driver", ["libcuda.so.1"])
    trt = check_library("ort-trt", _shared(tmp_path, "trt", ["libnvinfer.so.10", "libcuda.so.1"]), False)
    assert trt.status == "not-installed" and trt.missing == ["libcuda.so.1", "libnvinfer.so.10"]
    broken = check_library("bnb", _shared(tmp_path, "bnb", ["libnvJitLink.so.13", "libcuda.so.1"]), False)
    assert broken.status == "failed" and "libnvJitLink.so.13" in broken.detail


def test_doctor_json_here_reports_every_component_and_nothing_broken(repo: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "quantmatrix", "doctor", "--json"], cwd=repo, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    names = [c["name"] for c in report["components"]]
    assert names == [
        "nvidia-driver", "nvml", "torch", "pycuda", "tensorrt", "onnxruntime-cuda", "onnxruntime-tensorrt",
        "bitsandbytes",
    ]  # fmt: skip
    assert report["ok"] is True and report["failed"] == []
    if NO_GPU is not None:
        assert report["components"][0]["status"] == "no-driver" and report["gpu_ready"] is False


# -- the libcuda link stub --------------------------------------------------------------------------


@needs_gcc
def test_libcuda_stub_has_the_driver_soname(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "containers"))
    try:
        import make_libcuda_stub as stub
    finally:
        sys.path.pop(0)
    header = tmp_path / "cuda.h"
    header.write_text(
        "CUresult CUDAAPI cuInit(unsigned int Flags);\nCUresult CUDAAPI cuDeviceGet(CUdevice *d, int o);\n"
    )
    names = stub.entry_points(header)
    assert names == ["cuDeviceGet", "cuInit"]
    lib = stub.build_stub(names, tmp_path, tmp_path)
    dyn = subprocess.run(["readelf", "-d", "--dyn-syms", str(lib)], capture_output=True, text=True, check=True).stdout
    assert "Library soname: [libcuda.so.1]" in dyn
    assert "cuInit" in dyn and "cuDeviceGet" in dyn
    assert (tmp_path / "libcuda.so.1").resolve() == lib.resolve()
    conf = stub.aksetup_defaults(Path("/opt/cuda-stub"))
    namespace: dict[str, Any] = {}
    exec(compile(conf, "aksetup-defaults.py", "exec"), namespace)  # what pycuda's aksetup does with the file
    assert namespace["CUDA_ROOT"] == "/opt/cuda-stub" and namespace["CUDA_ENABLE_CURAND"] is False
    assert namespace["CUDA_INC_DIR"] == ["/opt/cuda-stub/include"]


# -- TensorRT build log and engine inspector -------------------------------------------------------


def test_build_log_keeps_info_and_above_and_never_raises() -> None:
    echoed: list[str] = []
    log = BuildLog("INFO", echoed.append)
    for severity, msg in [(4, "tactic 17 timing"), (3, "built"), (2, "weights"), (1, "bad"), (0, "worse")]:
        log.add(severity, msg)
    assert log.lines == ["[INFO] built", "[WARNING] weights", "[ERROR] bad", "[INTERNAL_ERROR] worse"]
    assert log.dropped == 1 and log.text().endswith("(1 lines below INFO not kept)\n")
    assert echoed == ["tensorrt: bad", "tensorrt: worse"] and log.errors() == ["[ERROR] bad", "[INTERNAL_ERROR] worse"]
    log.text()  # written once the build is over; TensorRT may still log while its objects are freed

    def explode(_: str) -> None:
        raise RuntimeError("echo failed")

    log.echo = explode
    log.add(1, "after the write")  # must not raise into TensorRT's C++ caller
    log.add("3", "not an int")  # type: ignore[arg-type]
    assert log.lines[-1] == "[ERROR] after the write" and len(log.lines) == 5
    assert "[ERROR] after the write\n" in log.text()


def test_inspector_layers_count_int8_compute_not_reformats() -> None:
    info = (FIXTURES / "trt_inspector_int8.json").read_text()
    by_type, int8 = layer_precisions(info)
    assert by_type == {"fp32": 2, "int64": 1, "int8": 3}
    assert int8 == 2  # the two INT8 GEMMs; the Quantize and the reformat move data, they do not compute


def test_inspector_without_detail_or_json_is_an_error() -> None:
    with pytest.raises(QuantmatrixError, match="DETAILED"):
        layer_precisions(json.dumps({"Layers": ["a", "b"], "Bindings": []}))
    with pytest.raises(QuantmatrixError, match="not layer JSON"):
        layer_precisions("Layers: a, b")
    assert layer_precisions(json.dumps({"Layers": []})) == ({}, 0)


# -- CUDA events bracket only what they name (a recording stand-in for pycuda/TensorRT, absent here) --


class _Calls(list[str]):
    pass


class _Event:
    def __init__(self, calls: _Calls, i: int) -> None:
        self.calls, self.i = calls, i

    def record(self, stream: Any) -> None:
        self.calls.append(f"event{self.i}")

    def time_since(self, other: Any) -> float:
        return 0.5


class _Cuda:
    def __init__(self, calls: _Calls) -> None:
        self.calls, self.events = calls, 0

    def Stream(self) -> Any:  # pycuda's name
        calls = self.calls

        class S:
            handle = 7

            def synchronize(self) -> None:
                calls.append("sync")

        return S()

    def Event(self) -> _Event:
        self.events += 1
        return _Event(self.calls, self.events - 1)

    def mem_alloc(self, n: int) -> int:
        return 1000 + n

    def pagelocked_empty(self, n: int, dtype: Any) -> np.ndarray:
        return np.zeros(n, dtype=dtype)

    def memcpy_htod_async(self, dst: Any, src: Any, stream: Any) -> None:
        self.calls.append("htod")

    def memcpy_dtoh_async(self, dst: np.ndarray, src: Any, stream: Any) -> None:
        self.calls.append("dtoh")
        dst[:] = 1.0


class _Context:
    def __init__(self, calls: _Calls) -> None:
        self.calls, self.shapes = calls, {}

    def set_optimization_profile_async(self, k: int, stream: int) -> None: ...

    def set_tensor_address(self, name: str, address: int) -> None: ...

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> None:
        self.calls.append("shape")
        self.shapes[name] = shape

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        self.calls.append("check")
        return (next(iter(self.shapes.values()))[0], 3)

    def execute_async_v3(self, stream: int) -> bool:
        self.calls.append("execute")
        return True


class _Engine:
    def __init__(self, calls: _Calls) -> None:
        self.calls = calls

    def create_execution_context(self) -> _Context:
        return _Context(self.calls)


def test_tensorrt_events_bracket_only_copies_and_execute() -> None:
    calls = _Calls()
    inputs = [EngineTensor("input_ids", "input", "int64", (-1, -1)), EngineTensor("mask", "input", "int64", (-1, -1))]
    session = TensorrtSession(
        cuda=_Cuda(calls), engine=_Engine(calls), inputs=inputs,
        output=EngineTensor("logits", "output", "float32", (-1, 3)),
        profiles=[ProfileRange(0, {t.name: ((1, 1), (4, 8), (4, 8)) for t in inputs})],
        num_labels=3, options={}, timing_limit=10,
    )  # fmt: skip
    calls.clear()
    feed = {"input_ids": np.ones((2, 8), dtype=np.int64), "mask": np.ones((2, 8), dtype=np.int64)}
    out = session.predict(feed)
    assert out.shape == (2, 3)
    assert calls == [
        "shape", "shape", "check",  # host work before the first event
        "event0", "htod", "htod", "event1",  # h2d: the copies alone
        "execute", "event2",  # compute: execute_async_v3 alone
        "dtoh", "event3", "sync",
    ]  # fmt: skip
    assert session.device_timing(1) == {"h2d": [0.5], "compute": [0.5], "d2h": [0.5]}
    assert session.allocated_bytes() == 2 * 4 * 8 * 8 + 4 * 3 * 4  # two int64 inputs, the float32 logits


# -- GPU memory and energy --------------------------------------------------------------------------


def test_energy_figures_from_two_counter_readings() -> None:
    assert energy_figures(10_000, 40_000, 0.5, 100) == (30.0, 0.3, 60.0, None)
    assert (
        energy_figures(10_000, 10_000, 0.5, 100)[3]
        == "the energy counter did not move over 0.500 s (updated too rarely)"
    )
    assert "went backwards" in str(energy_figures(9, 1, 0.5, 100)[3])
    assert "no timed calls" in str(energy_figures(1, 9, 0.5, 0)[3])


@pytest.mark.skipif(NO_GPU is None, reason="this machine has a GPU: NVML answers (see the gpu tests)")
def test_counters_without_nvml_are_null_with_the_reason() -> None:
    resets: list[int] = []
    counters = DeviceCounters(0, allocator_peak=(lambda: resets.append(1), lambda: 4096))
    counters.start()
    fields = counters.stop(calls=12)
    assert resets == [1] and fields["allocator_peak_bytes"] == 4096 and fields["allocator_reason"] is None
    assert fields["device_used_bytes"] is None and fields["energy_j"] is None and fields["average_watts"] is None
    assert fields["memory_reason"] == fields["energy_reason"]
    assert fields["energy_reason"].startswith(("no NVML", "no NVIDIA"))  # type: ignore[union-attr]
    assert fields["calls"] == 12
    record = GpuCounters(device_name=None, **fields)
    assert GpuCounters.model_validate_json(record.model_dump_json()) == record
    bare = DeviceCounters(0).stop(calls=1)
    assert bare["allocator_peak_bytes"] is None and bare["allocator_reason"] == "no allocator counter"


def test_result_schema_has_the_gpu_counters() -> None:
    props = Result.model_json_schema()["properties"]
    assert "gpu" in props and "GpuCounters" in json.dumps(props["gpu"])


# -- on a GPU host (scripts/gpu_check.sh): no optimum, no packaged model needed ---------------------

needs_gpu = pytest.mark.skipif(NO_GPU is not None, reason=f"needs an NVIDIA GPU: {NO_GPU}")


@pytest.mark.gpu
@needs_gpu
def test_doctor_on_a_gpu_host_sees_the_driver_torch_and_nvml(repo: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "quantmatrix", "doctor", "--json"], cwd=repo, capture_output=True, text=True, timeout=300
    )
    report = {c["name"]: c for c in json.loads(proc.stdout)["components"]}
    assert report["nvidia-driver"]["status"] == "ok", report["nvidia-driver"]
    assert report["nvml"]["status"] == "ok", report["nvml"]
    assert report["torch"]["status"] in ("ok", "not-installed"), report["torch"]


@pytest.mark.gpu
@needs_gpu
def test_torch_cuda_events_and_counters_on_a_real_gpu() -> None:
    import torch

    from runners.backends.torch import TorchSession

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(16, 4)

        def forward(self, input_ids: Any) -> Any:
            return self.lin(input_ids.float())

    session = TorchSession(Tiny().cuda().eval(), ("input_ids",), "cuda", {})
    counters = session.device_counters()
    counters.start()
    for _ in range(50):
        out = session.predict({"input_ids": np.ones((32, 16), dtype=np.int64)})
    fields = counters.stop(calls=50)
    assert out.shape == (32, 4)
    timing = session.device_timing(50)
    assert len(timing["compute"]) == 50 and min(timing["compute"]) > 0
    assert fields["allocator_peak_bytes"] and fields["allocator_peak_bytes"] > 0
    assert fields["device_used_bytes"] and fields["device_used_bytes"] > 0, fields["memory_reason"]
    assert fields["energy_j"] is not None or fields["energy_reason"], fields


# -- the CUDA image, built on the Debian base here (docker marker; CI's CUDA stage builds it first) ----

CUDA_IMAGE_ARGS = {"BASE_IMAGE": "debian:bookworm-slim", "TENSORRT_REQUIREMENT": ""}


@pytest.mark.docker
@pytest.mark.slow
def test_cuda_image_loads_every_installed_gpu_library_without_a_gpu() -> None:
    from bench.docker import docker_binary, ensure_image

    try:
        docker = docker_binary()
    except QuantmatrixError as e:
        pytest.skip(str(e))
    if subprocess.run([docker, "info"], capture_output=True).returncode != 0:
        pytest.skip("no Docker engine reachable (containers/provision.sh starts one on Debian)")
    tag = ensure_image("cuda", build_args=CUDA_IMAGE_ARGS)
    proc = subprocess.run(
        [docker, "run", "--rm", "--network", "none", tag, "-m", "quantmatrix", "doctor", "--json",
         "--expect-installed", "torch,pycuda,onnxruntime-cuda,bitsandbytes"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    report = json.loads(proc.stdout)
    status = {c["name"]: c for c in report["components"]}
    assert proc.returncode == 0 and report["failed"] == [], report
    # No GPU here: the driver's libraries are the only thing missing from what is installed.
    for name in ("nvidia-driver", "nvml", "torch", "pycuda"):
        assert status[name]["status"] == "no-driver", status[name]
    assert status["pycuda"]["missing"] == ["libcuda.so.1"]  # linked against the stub's soname
    assert status["tensorrt"]["status"] == "not-installed"
    assert status["onnxruntime-cuda"]["status"] in ("ok", "no-driver"), status["onnxruntime-cuda"]
    trt_ep = status["onnxruntime-tensorrt"]
    assert trt_ep["status"] == "not-installed" and all(m.startswith(("libnvinfer", "libnvonnxparser", "libcuda"))
                                                        for m in trt_ep["missing"]), trt_ep  # fmt: skip
    assert status["bitsandbytes"]["status"] in ("ok", "no-driver"), status["bitsandbytes"]
    assert "CUDA 13" in status["torch"]["detail"]


# -- the bare-host scripts: packing under the limit, and the check's plan --------------------------


def _reference_key(model: str = "tiny-bert") -> str:
    from quantmatrix.plan import build_jobs
    from quantmatrix.spec import load_matrix

    return build_jobs(load_matrix(ROOT / "matrix.toml"), model, ())[0].key


def _pack(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**__import__("os").environ, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_pack.sh"), *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_gpu_pack_dry_run_plans_wheels_for_the_hosts_python(tmp_path: Path) -> None:
    out = tmp_path / "carry"
    proc = _pack("--dry-run", "--out", str(out), "--artifacts", str(tmp_path / "a"))
    assert proc.returncode == 0, proc.stderr
    assert "wheels for CPython 3.12" in proc.stdout and "(limit 60 MiB)" in proc.stdout
    download = next(ln for ln in proc.stdout.splitlines() if " pip download " in ln)
    assert "--python-version 3.12 --implementation cp" in download and "--only-binary=:all:" in download
    assert "pydantic==2.14.3" in download and "pytest==9.2.0" in download
    assert f"-m builders reference --model tiny-bert --artifacts {tmp_path / 'a'}" in proc.stdout
    assert not out.exists() and not (tmp_path / "a").exists()  # a plan changes nothing


def test_gpu_pack_enforces_the_carry_limit(tmp_path: Path) -> None:
    key = _reference_key()
    ref = tmp_path / "artifacts" / key
    ref.mkdir(parents=True)
    (ref / "manifest.json").write_text("{}")
    (ref / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(3 << 20))  # incompressible 3 MiB
    common = ["--no-wheels", "--artifacts", str(tmp_path / "artifacts")]
    over = _pack(*common, "--out", str(tmp_path / "small"), "--limit-mib", "2")
    assert over.returncode == 1 and "over the 2 MiB carry limit" in over.stderr, over.stderr
    ok = _pack(*common, "--out", str(tmp_path / "carry"), "--limit-mib", "60")
    assert ok.returncode == 0, ok.stderr
    carry = tmp_path / "carry"
    assert (carry / "REFERENCE_KEY").read_text().strip() == key
    sums = (carry / "SHA256SUMS").read_text()
    assert "./reference.tar.gz" in sums and "./REFERENCE_KEY" in sums
    listing = subprocess.run(["tar", "-tzf", str(carry / "reference.tar.gz")], capture_output=True, text=True).stdout
    assert f"{key}/manifest.json" in listing and f"{key}/model.safetensors" in listing
    assert sum(p.stat().st_size for p in carry.rglob("*") if p.is_file()) < 60 << 20


def test_gpu_check_plan_fits_in_eight_minutes(tmp_path: Path) -> None:
    carry = tmp_path / "carry"
    (carry / "wheels").mkdir(parents=True)
    (carry / "reference.tar.gz").write_bytes(b"")
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out), "--dry-run", "--carry", str(carry)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    steps = [ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("== ") and "(limit" in ln]
    assert steps == ["machine", "wheels", "doctor", "probe", "unpack", "gpu-min", "pytest-gpu"]
    limits = [int(ln.split("(limit ")[1].split("s)")[0]) for ln in proc.stdout.splitlines() if "(limit" in ln]
    assert sum(limits) + 20 <= 480  # packing the tarball gets the last 20 s
    assert "--profile gpu-min" in proc.stdout and "doctor --json --require-gpu" in proc.stdout
    assert "-m gpu tests/test_gpu_path.py" in proc.stdout
    assert list(out.glob("*.tar.gz")) == []  # a plan leaves no results
