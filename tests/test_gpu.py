"""The GPU path: pure parts of the TensorRT runner and builder, CUDA skips with reasons, half-precision variants.

Everything that needs no device runs here; tests marked `gpu` run the CUDA cells for real and
skip with the driver's own reason where there is no GPU (`pytest -m gpu` on a GPU machine).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MATRIX

from builders import link_tree
from builders.tensorrt_engine import SCORING_BATCH, profile_shapes, qdq_problems
from quantmatrix.errors import QuantmatrixError
from quantmatrix.gpu import cuda_error_reason, missing_module, probe_cuda
from quantmatrix.records import EngineTarget, Result, read_record
from runners.backends.tensorrt import (
    EngineError,
    EngineTensor,
    ProfileRange,
    bind_inputs,
    check_output_shape,
    engine_mismatch,
    max_shape,
    pick_profile,
    split_io,
)
from runners.guard import GuardFailure, check_agreement

NO_GPU = probe_cuda().reason
needs_gpu = pytest.mark.skipif(NO_GPU is not None, reason=f"needs an NVIDIA GPU: {NO_GPU}")
needs_tensorrt = pytest.mark.skipif(
    (missing_module("tensorrt", "TensorRT") or NO_GPU) is not None,
    reason=f"needs TensorRT on a GPU: {missing_module('tensorrt', 'TensorRT') or NO_GPU}",
)

# An engine's I/O table in an order that differs from the tokenizer's (input_ids, token_type_ids,
# attention_mask): binding by position would feed the attention mask as token ids.
TABLE = [
    EngineTensor("attention_mask", "input", "int64", (-1, -1)),
    EngineTensor("logits", "output", "float32", (-1, 9)),
    EngineTensor("input_ids", "input", "int64", (-1, -1)),
    EngineTensor("token_type_ids", "input", "int32", (-1, -1)),
]


def _profiles() -> list[ProfileRange]:
    names = ["attention_mask", "input_ids", "token_type_ids"]
    return [
        ProfileRange(i, {n: ((1, 1), (b, 128), (b, 128)) for n in names}) for i, b in enumerate((1, 8, SCORING_BATCH))
    ]


# -- imports never touch CUDA ---------------------------------------------------------------------


def test_importing_builders_runners_report_does_not_touch_cuda(repo: Path) -> None:
    code = """
import sys
import builders, runners, report
import report.site, report.data
builders.registry(); runners.registry()
heavy = sorted(m for m in ("tensorrt", "pycuda", "pycuda.driver", "pycuda.autoinit", "torch", "onnxruntime")
               if m in sys.modules)
maps = open("/proc/self/maps").read()
print("heavy=" + ",".join(heavy))
print("libcuda=" + str("libcuda" in maps))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "heavy=\n" in out.stdout, out.stdout
    assert "libcuda=False" in out.stdout


# -- the CUDA probe -------------------------------------------------------------------------------


def test_probe_says_why_there_is_no_gpu() -> None:
    probe = probe_cuda()
    if probe.device is not None:
        pytest.skip(f"this machine has a GPU: {probe.device.name}")
    assert probe.reason
    assert probe.reason.startswith(("no NVIDIA driver", "no NVIDIA GPU visible", "the NVIDIA driver", "the CUDA"))


def test_cuda_error_reasons_name_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert cuda_error_reason(100, "cuInit") == "no NVIDIA GPU visible (CUDA_VISIBLE_DEVICES='') [cuInit returned 100]"
    assert "older than" in cuda_error_reason(35, "cuInit")
    assert cuda_error_reason(12345, "cuInit").startswith("CUDA driver error 12345")


def test_missing_module_names_the_package() -> None:
    assert missing_module("numpy") is None
    assert missing_module("no_such_module_qm", "TensorRT") == "TensorRT not installed"


# -- optimisation profiles, I/O table, binding by name ---------------------------------------------


def test_profile_shapes_one_per_batch_with_the_scoring_batch() -> None:
    profiles = profile_shapes(["input_ids", "attention_mask"], (8, 1, 8), 1, 64, 128)
    assert [p.batch for p in profiles] == [1, 8, SCORING_BATCH]
    assert profiles[1].shapes["input_ids"] == ((1, 1), (8, 64), (8, 128))
    assert set(profiles[0].shapes) == {"input_ids", "attention_mask"}
    with pytest.raises(QuantmatrixError, match="min 1 <= opt 256 <= max 128"):
        profile_shapes(["input_ids"], (1,), 1, 256, 128)
    with pytest.raises(QuantmatrixError, match="positive"):
        profile_shapes(["input_ids"], (0,), 1, 128, 128)


def test_split_io_finds_the_logits_output_by_name() -> None:
    inputs, output = split_io(TABLE)
    assert [t.name for t in inputs] == ["attention_mask", "input_ids", "token_type_ids"]
    assert output.name == "logits"
    two = [*TABLE, EngineTensor("hidden", "output", "float32", (-1, -1, 64))]
    with pytest.raises(EngineError, match="2 outputs"):
        split_io(two)
    assert split_io(two, "logits")[1].name == "logits"
    with pytest.raises(EngineError, match="no output named 'probs'"):
        split_io(two, "probs")


def test_inputs_are_bound_by_name_not_position() -> None:
    inputs, _ = split_io(TABLE)
    feed = {  # the tokenizer's order, each tensor recognisable by its values
        "input_ids": np.full((2, 5), 101, dtype=np.int64),
        "token_type_ids": np.zeros((2, 5), dtype=np.int64),
        "attention_mask": np.ones((2, 5), dtype=np.int64),
    }
    bound = bind_inputs(inputs, feed)
    got = [(t.name, int(a[0, 0])) for t, a in bound]
    assert got == [("attention_mask", 1), ("input_ids", 101), ("token_type_ids", 0)]
    assert bound[2][1].dtype == np.int32  # cast to the engine's declared dtype
    with pytest.raises(EngineError, match=r"lacks engine inputs \['token_type_ids'\]"):
        bind_inputs(inputs, {k: v for k, v in feed.items() if k != "token_type_ids"})
    with pytest.raises(EngineError, match="has shape"):
        bind_inputs(inputs, {**feed, "input_ids": np.zeros((2, 5, 1), dtype=np.int64)})


def test_pick_profile_prefers_the_tightest_and_says_what_to_rebuild() -> None:
    profiles = _profiles()
    shape = {n: (1, 128) for n in profiles[0].shapes}
    assert pick_profile(profiles, shape) == 0
    assert pick_profile(profiles, {n: (4, 37) for n in shape}) == 1
    assert pick_profile(profiles, {n: (32, 128) for n in shape}) == 2
    with pytest.raises(EngineError, match=r"no optimisation profile admits .* add the batch size"):
        pick_profile(profiles, {n: (64, 128) for n in shape})
    with pytest.raises(EngineError):
        pick_profile(profiles, {n: (1, 129) for n in shape})
    assert max_shape(profiles, "input_ids") == (SCORING_BATCH, 128)


def test_output_shape_must_be_batch_by_labels() -> None:
    check_output_shape((4, 9), 4, 9)
    with pytest.raises(EngineError, match=r"\[9, 4\], expected \[batch=4, num_labels=9\]"):
        check_output_shape((9, 4), 4, 9)


def test_engine_for_another_gpu_or_tensorrt_is_a_clear_rebuild() -> None:
    h100 = EngineTarget(tensorrt_version="10.16.1.11", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0")
    assert engine_mismatch(h100, h100) is None
    reason = engine_mismatch(
        h100, EngineTarget(tensorrt_version="10.16.1.11", gpu_name="NVIDIA A100-SXM4-80GB", compute_capability="8.0")
    )
    assert reason is not None
    assert "compute capability 9.0 (this GPU: 8.0)" in reason and "rebuild" in reason
    reason = engine_mismatch(h100, h100.model_copy(update={"tensorrt_version": "10.13.0.35"}))
    assert reason is not None and reason.startswith("engine built for TensorRT 10.16.1.11 (this machine: 10.13.0.35)")


def test_the_guard_catches_the_seeds_everything_is_business_engine() -> None:
    # The seeds' TensorRT engine put every headline in one class; the same guard as the CPU runners stops it.
    labels = {str(i): name for i, name in enumerate(["World", "Sports", "Business", "Sci/Tech"])}
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(40, 4)).astype(np.float32)
    broken = np.zeros_like(reference)
    broken[:, 2] = 5.0
    with pytest.raises(GuardFailure, match="100% predicted 'Business'"):
        check_agreement("canary", broken, reference, 0.5, labels)


# -- INT8 source checks (real onnxruntime quantisation of a one-MatMul graph) ----------------------


def _matmul_model(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save_model(model, str(path))


@pytest.mark.parametrize(
    ("activation", "symmetric", "problem"),
    [("uint8", False, "quantised type UINT8"), ("int8", False, "non-zero zero point"), ("int8", True, None)],
)
def test_qdq_model_must_be_signed_and_symmetric_for_tensorrt(
    tmp_path: Path, activation: str, symmetric: bool, problem: str | None
) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    src, dst = tmp_path / "fp32.onnx", tmp_path / "qdq.onnx"
    _matmul_model(src)
    rng = np.random.default_rng(1)
    feeds = iter([{"x": (rng.normal(size=(4, 8)) + 0.5).astype(np.float32)} for _ in range(4)])

    class Reader:
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(feeds, None)

    quantize_static(
        str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8 if activation == "int8" else QuantType.QUInt8, weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": True} if symmetric else None,
    )  # fmt: skip
    problems = qdq_problems(dst)
    if problem is None:
        assert problems == []
    else:
        assert problems and problem in problems[0]
    assert "no QuantizeLinear" in qdq_problems(src)[0]


# -- runs on this machine: half-precision variants, CUDA cells skipped with their reasons -----------

GPU_MATRIX = (
    TINY_MATRIX
    + """
[variants.torch-fp16]
builder = "torch-half"

[variants.ort-fp16]
from = "onnx-fp32"
builder = "ort-fp16"

[variants.trt-fp16]
from = "onnx-fp32"
builder = "tensorrt-engine"

[runners.torch-cuda]
backend = "torch"
device = "cuda"

[runners.ort-cuda]
backend = "onnxruntime"
device = "cuda"
params = { provider = "cuda" }

[runners.tensorrt]
backend = "tensorrt"
device = "cuda"

[profiles.g]
models = ["tiny"]
variants = ["torch-fp16", "ort-fp16", "trt-fp16"]
runners = ["torch-eager", "torch-cuda", "ort-cuda", "tensorrt"]

[profiles.g.measure]
batch_sizes = [2]
seq_modes = ["padded"]
padded_length = 32
warmup = 1
min_iterations = 3
min_seconds = 0.02
eval_examples = 96
"""
)


@pytest.fixture(scope="module")
def gpu_built(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny artefacts (hard-linked) plus torch-fp16, ort-fp16 and trt-fp16 built next to them."""
    import builders
    import runners
    from quantmatrix.spec import load_matrix
    from quantmatrix.store import Store

    root = tmp_path_factory.mktemp("gpu")
    link_tree(built / "artifacts", root / "artifacts")
    (root / "matrix.toml").write_text(GPU_MATRIX)
    matrix = load_matrix(root / "matrix.toml", builders=builders.registry(), backends=runners.registry())
    builders.build_with_deps(matrix, "tiny", ("torch-fp16", "ort-fp16", "trt-fp16"), Store(root / "artifacts"))
    return root


def _run(root: Path, variant: str, runner: str) -> list[Result]:
    from quantmatrix.spec import load_matrix
    from runners.job import RunJob

    job = RunJob(
        load_matrix(root / "matrix.toml"), "g", "tiny", variant, runner,
        artifacts=root / "artifacts", results=root / "results", run_id="g", log=lambda _: None,
    )  # fmt: skip
    job.run()
    return [read_record(Result, job.path(c)) for c in job.cells]


def test_half_precision_artefacts_are_half_size_and_checked(gpu_built: Path) -> None:
    from safetensors import safe_open

    from quantmatrix.store import Store

    store = Store(gpu_built / "artifacts")
    fp16 = next(m for d in store.root.iterdir() if (m := store.read_any(d.name)) and m.variant == "torch-fp16")
    assert fp16.status == "ok" and fp16.precision == "fp16"
    with safe_open(str(store.path(fp16.key) / "model" / "model.safetensors"), "np") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}  # noqa: SIM118
    assert fp16.metrics["check_top1_agreement"] >= 0.95
    ort16 = next(m for d in store.root.iterdir() if (m := store.read_any(d.name)) and m.variant == "ort-fp16")
    assert ort16.status == "ok" and ort16.io_outputs[0].dtype == "float32"  # IO kept FP32
    assert ort16.metrics["check_top1_agreement"] >= 0.95


def test_fp16_runs_in_fp16_on_the_torch_runner(gpu_built: Path) -> None:
    (r,) = _run(gpu_built, "torch-fp16", "torch-eager")
    assert r.status == "ok", r.reason
    assert r.cell.precision == "fp16" and r.runner_options["dtype"] == "float16"
    assert r.verdict in ("pass", "drift") and r.agreement is not None and r.agreement.top1 >= 0.95
    assert r.device_timing is None  # CPU: no CUDA events


@pytest.mark.skipif(NO_GPU is None, reason="this machine has a GPU: the cells run (see the gpu tests)")
@pytest.mark.parametrize(
    ("variant", "runner", "reason"),
    [
        ("reference", "torch-cuda", "needs CUDA: "),
        ("torch-fp16", "torch-cuda", "needs CUDA: "),
        ("ort-fp16", "ort-cuda", "needs CUDA: "),
        ("trt-fp16", "tensorrt", ""),
    ],
)
def test_cuda_cells_are_skipped_with_the_reason(gpu_built: Path, variant: str, runner: str, reason: str) -> None:
    (r,) = _run(gpu_built, variant, runner)
    assert r.status == "skipped" and r.verdict == "skipped"
    assert r.reason is not None and r.reason.startswith(reason)
    expected = missing_module("tensorrt", "TensorRT") or NO_GPU if runner == "tensorrt" else NO_GPU
    assert expected is not None and expected in r.reason
    assert r.latency is None


# -- on a GPU ----------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("variant", ["reference", "torch-fp16"])
def test_torch_cuda_cells_run_with_cuda_event_timing(gpu_built: Path, variant: str) -> None:
    (r,) = _run(gpu_built, variant, "torch-cuda")
    assert r.status == "ok", r.reason
    assert r.fingerprint.gpu_name and r.runner_options["gpu"]
    assert r.device_timing is not None and r.device_timing.compute.p50 > 0
    assert r.device_timing.compute.iterations == r.latency.iterations  # type: ignore[union-attr]


@pytest.mark.gpu
@needs_tensorrt
def test_tensorrt_engine_builds_and_passes_the_guard(gpu_built: Path) -> None:
    (r,) = _run(gpu_built, "trt-fp16", "tensorrt")
    assert r.status == "ok", r.reason
    assert r.verdict in ("pass", "drift")
    assert r.device_timing is not None and r.device_timing.h2d.p50 >= 0


LM_MATRIX = """
[datasets.headlines9]
source = "bundled:headlines9"

[models.tiny-lm]
source = "random:gpt2-tiny"
task = "text-generation"
dataset = "headlines9"

[models.tiny-lm.generation]
prompts = 2
prompt_tokens = 8
new_tokens = 4

[runners.torch-cuda]
backend = "torch"
device = "cuda"

[variants.lm-bnb-int8]
builder = "torch-int8-bnb-lm"

[profiles.g]
models = ["tiny-lm"]
variants = ["lm-bnb-int8"]
runners = ["torch-cuda"]
"""


@pytest.mark.skipif(NO_GPU is None, reason="this machine has a GPU: the LLM.int8 cells run")
def test_bitsandbytes_llm_int8_without_a_gpu_is_skipped_with_the_reason(tmp_path: Path) -> None:
    import builders
    import runners
    from quantmatrix.bnb import unavailable
    from quantmatrix.spec import load_matrix
    from quantmatrix.store import Store
    from runners.job import RunJob

    (tmp_path / "matrix.toml").write_text(LM_MATRIX)
    matrix = load_matrix(tmp_path / "matrix.toml", builders=builders.registry(), backends=runners.registry())
    built = builders.build_with_deps(matrix, "tiny-lm", ("lm-bnb-int8",), Store(tmp_path / "artifacts"), log=print)
    reason = unavailable()
    assert reason is not None
    assert built["lm-bnb-int8"].status == "skipped" and built["lm-bnb-int8"].reason == reason
    job = RunJob(
        matrix, "g", "tiny-lm", "lm-bnb-int8", "torch-cuda",
        artifacts=tmp_path / "artifacts", results=tmp_path / "results", run_id="g", log=lambda _: None,
    )  # fmt: skip
    results = job.run()
    assert results and all(r.status == "skipped" and r.reason == reason for r in results)
