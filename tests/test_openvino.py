"""OpenVINO on the tiny models: IR conversion and NNCF INT8 builds, run jobs on the CPU plugin, generation
with the KV cache, and bad input (an unconvertible model, renamed IR inputs, a property the plugin rejects).

Real OpenVINO and NNCF throughout; the tiny classifier comes from conftest's `built`, a tiny GPT-2 is built here.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import builders
import runners
from quantmatrix.errors import QuantmatrixError
from quantmatrix.plan import build_jobs
from quantmatrix.records import Manifest, Result, read_record, write_record
from quantmatrix.spec import load_matrix
from quantmatrix.store import Store, list_files
from runners.job import RunJob

pytest.importorskip("openvino", reason="openvino is not installed (cpu dependency group)")
pytest.importorskip("nncf", reason="nncf is not installed (cpu dependency group)")

pytestmark = pytest.mark.slow

OV_ADDITIONS = """
[runners.openvino-cpu]
backend = "openvino"
params = { threads = 1 }

[runners.openvino-bad-property]
backend = "openvino"
params = { threads = 1, properties = ["NOT_A_CPU_PROPERTY=1"] }

[variants.openvino-fp32]
from = "onnx-fp32"
builder = "openvino-fp32"

[variants.openvino-int8]
from = "openvino-fp32"
builder = "openvino-int8"
params = { subset_size = 64 }

[variants.openvino-int8-layer1-fp32]
from = "openvino-fp32"
builder = "openvino-int8"
params = { subset_size = 64, ignored_scopes = [".*/encoder/layer[.]1/"] }

[variants.openvino-int8-no-such-scope]
from = "openvino-fp32"
builder = "openvino-int8"
params = { subset_size = 16, ignored_scopes = ["no_such_layer_anywhere"] }

[profiles.ov]
models = ["tiny"]
variants = ["openvino-fp32", "openvino-int8"]
runners = ["openvino-cpu", "openvino-bad-property"]

[profiles.ov.measure]
batch_sizes = [1, 4]
seq_modes = ["padded", "natural"]
padded_length = 32
warmup = 1
min_iterations = 3
min_seconds = 0.02
eval_examples = 200
"""
OV_VARIANTS = ("openvino-fp32", "openvino-int8", "openvino-int8-layer1-fp32")

LM_MATRIX = """
[datasets.headlines9]
source = "bundled:headlines9"

[models.tiny-lm]
source = "random:gpt2-tiny"
task = "text-generation"
dataset = "headlines9"

[models.tiny-lm.generation]
prompts = 4
prompt_tokens = 8
new_tokens = 8

[runners.openvino-cpu]
backend = "openvino"
params = { threads = 1 }

[variants.lm-onnx-past]
builder = "onnx-lm"

[variants.lm-ov]
from = "lm-onnx-past"
builder = "openvino-fp32-lm"

[variants.lm-ov-int8]
from = "lm-ov"
builder = "openvino-int8-lm"

[profiles.t]
models = ["tiny-lm"]
variants = ["lm-ov", "lm-ov-int8"]
runners = ["openvino-cpu"]

[profiles.t.measure]
generation_rounds = 2
"""


def _matrix(root: Path):
    return load_matrix(root / "matrix.toml", builders=builders.registry(), backends=runners.registry())


def _artefact(root: Path, model: str, variant: str) -> Path:
    return root / "artifacts" / {j.variant: j.key for j in build_jobs(_matrix(root), model, (variant,))}[variant]


def _manifest(root: Path, model: str, variant: str) -> Manifest:
    return read_record(Manifest, _artefact(root, model, variant) / "manifest.json")


def _run(root: Path, model: str, variant: str, runner: str, profile: str) -> list[Result]:
    RunJob(
        _matrix(root), profile, model, variant, runner,
        artifacts=root / "artifacts", results=root / "results", run_id="r", log=lambda _: None,
    ).run()  # fmt: skip
    return [read_record(Result, p) for p in sorted((root / "results" / "r").glob(f"{model}__{variant}__{runner}__*"))]


def _rewrite_files(art: Path) -> None:
    """Keep the manifest's file list consistent with edited files, as a buggy builder would have written it."""
    m = read_record(Manifest, art / "manifest.json")
    write_record(
        m.model_copy(update={"files": [f for f in list_files(art) if f.path != "manifest.json"]}), art / "manifest.json"
    )


@pytest.fixture(scope="session")
def ov_built(built, tmp_path_factory) -> Path:
    """conftest's tiny classifier with the OpenVINO variants added and built (reference and ONNX export reused)."""
    root = tmp_path_factory.mktemp("ov")
    shutil.copytree(built, root, dirs_exist_ok=True)
    (root / "matrix.toml").write_text((root / "matrix.toml").read_text() + OV_ADDITIONS)
    builders.build_with_deps(_matrix(root), "tiny", OV_VARIANTS, Store(root / "artifacts"), log=lambda _: None)
    return root


@pytest.fixture
def work(ov_built, tmp_path) -> Path:
    shutil.copytree(ov_built, tmp_path / "w")
    return tmp_path / "w"


def test_fp32_ir_keeps_fp32_weights_and_matches_the_reference(ov_built):
    import openvino as ov

    m = _manifest(ov_built, "tiny", "openvino-fp32")
    assert m.status == "ok" and m.format == "openvino" and m.precision == "fp32" and m.entry == "model.xml"
    assert {f.path for f in m.files} >= {"model.xml", "model.bin", "tokenizer/tokenizer.json"}
    assert m.metrics["check_max_abs_logit_diff"] <= 1e-3 and m.metrics["check_top1_agreement"] == 1.0
    onnx_m = _manifest(ov_built, "tiny", "onnx-fp32")
    assert [t.name for t in m.io_inputs] == [t.name for t in onnx_m.io_inputs]
    assert [t.name for t in m.io_outputs] == ["logits"] and m.io_outputs[0].shape == ["?", 9]
    assert m.id2label == onnx_m.id2label and m.extra["openvino"].startswith("2026.")
    model = ov.Core().read_model(str(_artefact(ov_built, "tiny", "openvino-fp32") / "model.xml"))
    constants = {
        op.get_element_type().get_type_name() for op in model.get_ordered_ops() if op.get_type_name() == "Constant"
    }
    assert "f16" not in constants and "f32" in constants  # compress_to_fp16=False kept the weights FP32


def test_int8_records_nncf_params_and_ignored_scopes_keep_layers_fp32(ov_built):
    m = _manifest(ov_built, "tiny", "openvino-int8")
    assert m.status == "ok" and m.format == "openvino" and m.precision == "int8"
    assert m.extra["nncf_params"] == {
        "preset": "mixed", "model_type": "transformer", "subset_size": 64, "fast_bias_correction": True,
        "ignored_scopes": [],
    }  # fmt: skip
    assert m.params["subset_size"] == 64 and m.extra["quantizer"] == "nncf.quantize"
    assert m.extra["op_counts"]["FakeQuantize"] > 0 and m.metrics["check_top1_agreement"] >= 0.9
    assert any(s.startswith("calibrate+convert: nncf.quantize preset=mixed") for s in m.steps)
    # Node names come from the ONNX export (/bert/encoder/layer.1/attention/self/query/MatMul, ...).
    partial = _manifest(ov_built, "tiny", "openvino-int8-layer1-fp32")
    assert partial.extra["nncf_params"]["ignored_scopes"] == [".*/encoder/layer[.]1/"]
    counts, full = partial.extra["op_counts"], m.extra["op_counts"]
    assert 0 < counts["FakeQuantize"] < full["FakeQuantize"] and 0 < counts["Constant[i8]"] < full["Constant[i8]"]


def test_an_ignored_scope_that_matches_nothing_fails_the_build_with_nncf_reason(ov_built, tmp_path):
    root = tmp_path / "w"
    shutil.copytree(ov_built, root)
    failures: dict[str, str] = {}
    builders.build_with_deps(
        _matrix(root), "tiny", ("openvino-int8-no-such-scope",), Store(root / "artifacts"), log=lambda _: None,
        failures=failures,
    )  # fmt: skip
    reason = failures["openvino-int8-no-such-scope"]
    assert "nncf.quantize failed on model.xml" in reason and "no_such_layer_anywhere" in reason, reason
    failed = Store(root / "artifacts").read_any(_artefact(root, "tiny", "openvino-int8-no-such-scope").name)
    assert failed is not None and failed.status == "failed" and "nncf.quantize failed" in (failed.reason or "")


def test_openvino_cells_are_guarded_measured_scored_and_judged(work):
    for variant, precision in (("openvino-fp32", "fp32"), ("openvino-int8", "int8")):
        results = _run(work, "tiny", variant, "openvino-cpu", "ov")
        assert [(r.cell.batch_size, r.cell.seq_mode) for r in results] == [
            (1, "natural"), (1, "padded"), (4, "natural"), (4, "padded"),
        ]  # fmt: skip
        for r in results:
            assert r.status == "ok", r.reason
            assert r.cell.backend == "openvino" and r.cell.precision == precision and r.threads == 1
            assert r.verdict in ("pass", "drift", "fail") and r.quality.examples == 200 and r.agreement.examples == 200
            assert r.latency.p50 > 0 and len(r.latency.samples) >= 3 and len(r.canary) == 12
            opts = r.runner_options
            assert opts["requested_properties"]["INFERENCE_NUM_THREADS"] == "1"
            assert opts["compiled_properties"]["INFERENCE_NUM_THREADS"] == "1"
            assert opts["compiled_properties"]["PERFORMANCE_HINT"] == "LATENCY"
            assert opts["compiled_properties"]["INFERENCE_PRECISION_HINT"] == "f32"
            assert opts["openvino"].startswith("2026.") and opts["entry"] == "model.xml"
        if precision == "fp32":
            assert {r.verdict for r in results} == {"pass"} and all(r.agreement.top1 == 1.0 for r in results)


def test_a_model_openvino_cannot_convert_fails_the_build_with_the_reason(work):
    import onnx
    from onnx import TensorProto, helper

    art = _artefact(work, "tiny", "onnx-fp32")
    # A graph with an operator no frontend knows, where the export should be.
    node = helper.make_node("Frobnicate", ["input_ids"], ["logits"], domain="com.example")
    graph = helper.make_graph(
        [node], "bad",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 9])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(art / "model.onnx"))
    _rewrite_files(art)
    store = Store(work / "artifacts")
    ir_key = _artefact(work, "tiny", "openvino-fp32").name
    shutil.rmtree(store.path(ir_key))
    failures: dict[str, str] = {}
    builders.build_with_deps(
        _matrix(work), "tiny", ("openvino-fp32", "openvino-int8"), store, log=lambda _: None, failures=failures
    )
    assert "OpenVINO cannot convert model.onnx" in failures["openvino-fp32"], failures
    assert "Frobnicate" in failures["openvino-fp32"]
    assert "not built: needs openvino-fp32" in failures["openvino-int8"]  # the rest of the plan goes on
    failed = store.read_any(ir_key)
    assert failed is not None and failed.status == "failed" and "cannot convert" in (failed.reason or "")


def test_an_ir_with_renamed_inputs_gives_failed_cells_naming_them(work):
    art = _artefact(work, "tiny", "openvino-fp32")
    xml = art / "model.xml"
    text = xml.read_text()
    renamed = re.sub(r'names="attention_mask"', 'names="mask"', text)
    assert renamed != text
    xml.write_text(renamed)
    _rewrite_files(art)
    results = _run(work, "tiny", "openvino-fp32", "openvino-cpu", "ov")
    assert len(results) == 4 and all(r.status == "failed" and r.latency is None for r in results)
    assert results[0].reason.startswith("guard: input names") and "'mask'" in results[0].reason, results[0].reason
    # The other variant on the same runner is unaffected.
    assert all(r.status == "ok" for r in _run(work, "tiny", "openvino-int8", "openvino-cpu", "ov"))


def test_a_property_the_plugin_rejects_gives_failed_cells_with_its_reason(work):
    results = _run(work, "tiny", "openvino-fp32", "openvino-bad-property", "ov")
    assert len(results) == 4 and all(r.status == "failed" for r in results)
    reason = results[0].reason
    assert "CPU plugin rejected model.xml" in reason and "NOT_A_CPU_PROPERTY" in reason, reason
    assert "src/" not in reason and "\n" not in reason  # OpenVINO's C++ locations are stripped


def test_plugin_config_and_error_cleaning():
    import openvino as ov

    from quantmatrix.openvino_model import clean_error
    from runners.backends.openvino import OpenVinoParams, plugin_config

    config = plugin_config(OpenVinoParams(properties=("CPU_DENORMALS_OPTIMIZATION = YES",)), 2)
    assert config == {
        "INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
        "CPU_DENORMALS_OPTIMIZATION": "YES",
    }  # fmt: skip
    with pytest.raises(QuantmatrixError, match="'NO_EQUALS_SIGN' is not NAME=VALUE"):
        plugin_config(OpenVinoParams(properties=("NO_EQUALS_SIGN",)), 1)
    import openvino.opset13 as ops

    x = ops.parameter([1, 4], np.float32, name="x")
    with pytest.raises(RuntimeError) as e:
        ov.Core().compile_model(ov.Model([ops.relu(x)], [x], "relu"), "CPU", {"PERFORMANCE_HINT": "FASTEST"})
    assert "src/" in str(e.value) and "src/" not in clean_error(e.value) and "FASTEST" in clean_error(e.value)


def test_a_cuda_runner_is_skipped_not_faked(work):
    from runners import LoadRequest, Skip
    from runners.backends.openvino import OpenVinoParams, load

    art = _artefact(work, "tiny", "openvino-fp32")
    manifest = read_record(Manifest, art / "manifest.json")
    with pytest.raises(Skip, match="CPU plugin only"):
        load(LoadRequest(path=art, manifest=manifest, device="cuda", threads=1, params=OpenVinoParams()))


def test_static_lengths_run_that_length_on_a_static_compile_and_others_on_the_dynamic_model(work):
    """`static_lengths = [L]`: [batch, L] feeds go to a model reshaped to that shape (one compile per
    shape, kept), other lengths to the dynamic model; the logits agree, and the result says it was used."""
    from runners import LoadRequest
    from runners.backends.openvino import OpenVinoParams, StaticShapes, load

    art = _artefact(work, "tiny", "openvino-int8")
    manifest = read_record(Manifest, art / "manifest.json")

    def request(params: OpenVinoParams) -> LoadRequest:
        return LoadRequest(path=art, manifest=manifest, device="cpu", threads=1, params=params)

    static, dynamic = load(request(OpenVinoParams(static_lengths=(16,)))), load(request(OpenVinoParams()))
    assert isinstance(static.graph, StaticShapes) and not isinstance(dynamic.graph, StaticShapes)
    assert static.options()["static_lengths"] == [16]
    rng = np.random.default_rng(0)

    def feed(batch: int, length: int) -> dict[str, np.ndarray]:
        ids = rng.integers(5, 90, (batch, length))
        return {n: ids if n == "input_ids" else np.ones_like(ids) for n in static.input_names}

    for batch, length in ((2, 16), (2, 16), (3, 16), (2, 9)):
        f = feed(batch, length)
        np.testing.assert_allclose(static.predict(f), dynamic.predict(f), rtol=1e-4, atol=1e-4)
    assert sorted(static.graph.static) == [(2, 16), (3, 16)]  # compiled once each; length 9 stayed dynamic
    assert static.graph.static[(2, 16)].compiled.inputs[0].get_partial_shape().is_static


@pytest.fixture(scope="session")
def lm_ov(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lm-ov")
    (root / "matrix.toml").write_text(LM_MATRIX)
    builders.build_with_deps(
        _matrix(root), "tiny-lm", ("lm-ov", "lm-ov-int8"), Store(root / "artifacts"), log=lambda _: None
    )
    return root


def test_lm_ir_gives_the_reference_tokens_with_and_without_the_cache(lm_ov):
    m = _manifest(lm_ov, "tiny-lm", "lm-ov")
    assert m.format == "openvino" and m.task == "text-generation" and m.precision == "fp32"
    assert m.extra["with_past"] and m.extra["past_inputs"] == 4  # 2 layers x key/value
    assert m.metrics["check_token_agreement"] == 1.0 and m.metrics["check_cache_equal"] == 1.0
    assert m.metrics["check_max_abs_logit_diff"] <= 1e-3
    q = _manifest(lm_ov, "tiny-lm", "lm-ov-int8")
    assert q.precision == "int8" and q.extra["quantizer"] == "nncf.compress_weights"
    assert q.extra["nncf_params"] == {"mode": "int8_asym", "ignored_scopes": []}
    assert q.extra["op_counts"].get("Constant[u8]", 0) > 0 and "FakeQuantize" not in q.extra["op_counts"]
    assert q.metrics["check_top1"] >= 0.5
    # INT8 weights take about a quarter of the FP32 weights' bytes.
    fp32_bin = next(f.size for f in m.files if f.path == "model.bin")
    int8_bin = next(f.size for f in q.files if f.path == "model.bin")
    assert int8_bin < 0.5 * fp32_bin


def test_lm_generation_cells_on_openvino(lm_ov, tmp_path):
    root = tmp_path / "w"
    shutil.copytree(lm_ov, root)
    for variant, precision in (("lm-ov", "fp32"), ("lm-ov-int8", "int8")):
        results = _run(root, "tiny-lm", variant, "openvino-cpu", "t")
        assert [(r.cell.batch_size, r.cell.seq_mode) for r in results] == [
            (1, "kv-cache"), (1, "no-cache"), (4, "kv-cache"), (4, "no-cache"),
        ]  # fmt: skip
        for r in results:
            assert r.status == "ok", r.reason
            g = r.generation
            assert r.cell.precision == precision and r.runner_options["compiled_properties"]["NUM_STREAMS"] == "1"
            assert g.cache_equal is True and g.deterministic and np.asarray(g.tokens).shape == (4, 8)
            assert len(g.decode.samples) == 2 * (4 // r.cell.batch_size) * 7 and g.prefill.p50 > 0
            assert r.verdict in ("pass", "drift") and r.throughput_per_s > 0
            if precision == "fp32":
                assert g.agreement.token_agreement == 1.0 and r.verdict == "pass"
