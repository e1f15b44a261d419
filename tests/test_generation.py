"""Causal-LM generation on a tiny random GPT-2: exports with and without past, cache equality, the
tied-embedding trap, run jobs writing generation results, a bad artefact, planning and the report.

A 2-layer GPT-2 (hidden 64, the offline BPE tokenizer) and its variants are built once per session.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import builders
import runners
from bench import plan
from quantmatrix.causal_lm import OrtLM, TorchLM, fixed_prompts, greedy, offline_tokenizer
from quantmatrix.errors import SpecError
from quantmatrix.plan import build_jobs
from quantmatrix.records import DecoderArch, HfLoad, Manifest, Result, read_record, write_record
from quantmatrix.spec import load_matrix
from quantmatrix.store import Store, list_files
from runners.job import RunJob

pytestmark = pytest.mark.slow

LM_MATRIX = """
[datasets.headlines9]
source = "bundled:headlines9"

[models.tiny-lm]
source = "hf:no-such-dir/distilgpt2"
fallback = "random:gpt2-tiny"
task = "text-generation"
dataset = "headlines9"

[models.tiny-lm.generation]
prompts = 4
prompt_tokens = 8
new_tokens = 8

[models.tiny]
source = "random:bert-tiny"
dataset = "headlines9"

[runners.torch-eager]
backend = "torch"
params = { threads = 1 }

[runners.ort-cpu]
backend = "onnxruntime"
params = { threads = 1 }

[runners.null]
backend = "null"

[variants.onnx-fp32]
builder = "onnx-fp32"

[variants.lm-onnx]
builder = "onnx-lm"
params = { with_past = false }

[variants.lm-onnx-past]
builder = "onnx-lm"

[variants.lm-int8]
from = "lm-onnx-past"
builder = "ort-int8-dynamic-lm"
params = { per_channel = true }

[variants.lm-int8-tied]
from = "lm-onnx-past"
builder = "ort-int8-dynamic-lm"
params = { untie_lm_head = false, op_types = [] }

[variants.lm-torch-int8]
builder = "torch-int8-dynamic-lm"

[profiles.t]
models = ["tiny-lm"]
variants = ["lm-onnx", "lm-onnx-past", "lm-int8", "lm-int8-tied", "lm-torch-int8"]
runners = ["torch-eager", "ort-cpu", "null"]

[profiles.t.measure]
generation_rounds = 2

[profiles.mixed]
models = ["tiny", "tiny-lm"]
variants = ["onnx-fp32", "lm-onnx-past", "lm-int8"]
runners = ["torch-eager", "ort-cpu", "null"]
"""
VARIANTS = ("lm-onnx", "lm-onnx-past", "lm-int8", "lm-int8-tied", "lm-torch-int8")


def _matrix(root: Path):
    return load_matrix(root / "matrix.toml", builders=builders.registry(), backends=runners.registry())


@pytest.fixture(scope="session")
def lm_built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lm")
    (root / "matrix.toml").write_text(LM_MATRIX)
    builders.build_with_deps(_matrix(root), "tiny-lm", VARIANTS, Store(root / "artifacts"), log=lambda _: None)
    return root


@pytest.fixture
def work(lm_built, tmp_path) -> Path:
    shutil.copytree(lm_built, tmp_path / "w")
    return tmp_path / "w"


def _artefact(root: Path, variant: str) -> Path:
    return root / "artifacts" / {j.variant: j.key for j in build_jobs(_matrix(root), "tiny-lm", (variant,))}[variant]


def _run(root: Path, variant: str, runner: str) -> list[Result]:
    RunJob(
        _matrix(root), "t", "tiny-lm", variant, runner,
        artifacts=root / "artifacts", results=root / "results", run_id="r", log=lambda _: None,
    ).run()  # fmt: skip
    return [read_record(Result, p) for p in sorted((root / "results" / "r").glob(f"tiny-lm__{variant}__{runner}__*"))]


def _ort(path: Path) -> OrtLM:
    import onnxruntime as ort

    return OrtLM(ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"]))


def test_reference_falls_back_to_labelled_random_init(lm_built):
    ref = read_record(Manifest, _artefact(lm_built, "reference") / "manifest.json")
    assert ref.builder == "lm-reference" and ref.task == "text-generation" and ref.random_init
    assert ref.extra["source_used"] == "random:gpt2-tiny" and "not GPT-2's tokenizer" in (ref.tokenizer_origin or "")
    assert isinstance(ref.load, HfLoad) and isinstance(ref.arch, DecoderArch) and ref.arch.n_layer == 2
    assert any("hf:no-such-dir/distilgpt2 unavailable" in n for n in ref.notes)


def test_exports_without_and_with_past_match_pytorch(lm_built):
    from transformers import AutoModelForCausalLM

    ref_dir = _artefact(lm_built, "reference")
    torch_lm = TorchLM(AutoModelForCausalLM.from_pretrained(str(ref_dir / "model")).eval())
    prompts = fixed_prompts(offline_tokenizer(), ["Oil giant profits surge despite pledge to cut emissions"] * 2, 2, 8)
    expected = torch_lm.logits(prompts)
    for variant, with_past in (("lm-onnx", False), ("lm-onnx-past", True)):
        path = _artefact(lm_built, variant)
        m = read_record(Manifest, path / "manifest.json")
        assert m.extra["with_past"] is with_past and m.extra["export_task"].endswith("with-past") is with_past
        assert any(t.name.startswith("past_key_values.") for t in m.io_inputs) is with_past
        ort_lm = _ort(path)
        assert ort_lm.has_past is with_past
        np.testing.assert_allclose(ort_lm.logits(prompts), expected, atol=1e-4)
        assert np.array_equal(greedy(ort_lm, prompts, 6, use_cache=False)[0], greedy(torch_lm, prompts, 6, False)[0])


def test_greedy_tokens_with_cache_equal_tokens_without(lm_built):
    from transformers import AutoModelForCausalLM

    ref_dir = _artefact(lm_built, "reference")
    prompts = np.load(ref_dir / "eval" / "generation_prompts.npy")
    torch_lm = TorchLM(AutoModelForCausalLM.from_pretrained(str(ref_dir / "model")).eval())
    for stepper in (torch_lm, _ort(_artefact(lm_built, "lm-onnx-past"))):
        cached, _ = greedy(stepper, prompts, 8, use_cache=True)
        assert np.array_equal(cached, greedy(stepper, prompts, 8, use_cache=False)[0])
        assert np.array_equal(cached, np.load(ref_dir / "eval" / "generation_tokens.npy"))


def _lm_head(path: Path):
    """The graph's nodes upstream of the output projection's weight, and that weight's initializer (if any)."""
    import onnx

    graph = onnx.load(str(path / "model.onnx")).graph
    producers = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    frontier, head = [producers["logits"]], None
    while head is None:
        head = next((n for n in frontier if n.op_type in ("MatMul", "MatMulInteger")), None)
        frontier = [producers[i] for n in frontier for i in n.input if i in producers]
    upstream, todo = [], [head.input[1]]
    while todo:
        name = todo.pop()
        if name in producers:
            upstream.append(producers[name].op_type)
            todo.extend(producers[name].input)
    return head, upstream, inits.get(head.input[1])


def test_int8_output_projection_has_its_own_int8_weight(lm_built):
    import onnx

    head, upstream, weight = _lm_head(_artefact(lm_built, "lm-int8"))
    assert head.op_type == "MatMulInteger" and weight is not None
    assert weight.data_type == onnx.TensorProto.INT8 and list(weight.dims) == [64, len(offline_tokenizer())]
    assert upstream == []  # nothing recomputes the weight per token: no DequantizeLinear -> Transpose
    graph = onnx.load(str(_artefact(lm_built, "lm-int8") / "model.onnx")).graph
    producers = {o: n for n in graph.node for o in n.output}
    assert not [n for n in graph.node if n.op_type == "Transpose" and n.input[0] in producers
                and producers[n.input[0]].op_type == "DequantizeLinear"]  # fmt: skip
    # Left tied (the trap), every token transposes and dequantises the whole INT8 embedding matrix.
    head, upstream, weight = _lm_head(_artefact(lm_built, "lm-int8-tied"))
    assert head.op_type == "MatMul" and weight is None and set(upstream[:2]) == {"Transpose", "DequantizeLinear"}
    m = read_record(Manifest, _artefact(lm_built, "lm-int8-tied") / "manifest.json")
    assert set(m.extra["lm_head"]["computed_per_call"]) == {"Transpose", "DequantizeLinear"}


def test_run_job_writes_generation_results(work):
    results = _run(work, "lm-int8", "ort-cpu")
    assert [(r.cell.batch_size, r.cell.seq_mode) for r in results] == [
        (1, "kv-cache"), (1, "no-cache"), (4, "kv-cache"), (4, "no-cache"),
    ]  # fmt: skip
    schema = json.loads((Path(__file__).parent.parent / "schemas" / "result.schema.json").read_text())
    import jsonschema

    for r in results:
        assert r.status == "ok", r.reason
        jsonschema.validate(json.loads((work / "results" / "r" / f"tiny-lm__lm-int8__ort-cpu__b{r.cell.batch_size}"
                                        f"__{r.cell.seq_mode}.json").read_text()), schema)  # fmt: skip
        g = r.generation
        assert g.kv_cache is (r.cell.seq_mode == "kv-cache") and r.random_init and "not GPT-2" in g.tokenizer
        calls = 4 // r.cell.batch_size
        assert len(g.prefill.samples) == 2 * calls and len(g.decode.samples) == 2 * calls * 7
        assert r.latency == g.decode and g.prefill.p50 > 0 and g.decode.p50 <= g.decode.p99
        assert np.asarray(g.tokens).shape == (4, 8) and g.deterministic and isinstance(g.cache_equal, bool)
        assert 0 <= g.agreement.token_agreement <= 1 and g.agreement.top1 >= 0.5 and g.agreement.mean_kl >= 0
        assert r.throughput_per_s == g.tokens_per_s > 0 and r.peak_rss_bytes > 0 and r.cold_start.load_ms > 0
    ref = _run(work, "reference", "torch-eager")
    assert {r.verdict for r in ref} == {"reference"} and all(r.generation.cache_equal for r in ref)
    assert all(r.generation.agreement.token_agreement == 1.0 for r in ref)
    torch_int8 = _run(work, "lm-torch-int8", "torch-eager")
    assert all(r.status == "ok" and r.cell.precision == "int8" for r in torch_int8)


def test_export_without_past_skips_only_the_cache_cells(work):
    results = _run(work, "lm-onnx", "ort-cpu")
    by_mode = {(r.cell.batch_size, r.cell.seq_mode): r for r in results}
    assert by_mode[(1, "kv-cache")].status == "skipped" and "without past" in by_mode[(1, "kv-cache")].reason
    assert by_mode[(1, "no-cache")].status == "ok" and by_mode[(1, "no-cache")].generation.cache_equal is None
    assert by_mode[(1, "no-cache")].generation.agreement.token_agreement == 1.0  # FP32 export: FP32's tokens


def test_bad_artefact_gives_failed_results(work):
    art = _artefact(work, "lm-onnx-past")
    model = art / "model.onnx"
    model.write_bytes(model.read_bytes()[:5000])  # a truncated export, manifest rewritten to match
    m = read_record(Manifest, art / "manifest.json")
    write_record(m.model_copy(update={"files": [f for f in list_files(art) if f.path != "manifest.json"]}),
                 art / "manifest.json")  # fmt: skip
    results = _run(work, "lm-onnx-past", "ort-cpu")
    assert len(results) == 4 and {r.status for r in results} == {"failed"}
    assert "onnxruntime cannot load model.onnx" in results[0].reason


def test_plan_routes_causal_lms_to_generation_jobs(lm_built):
    matrix = _matrix(lm_built)
    formats = {k: v.output_format for k, v in builders.registry().items()}
    p = plan(matrix, "mixed", "cpu", builder_formats=formats,
             backends=runners.registry(), run_id="x")  # fmt: skip
    builds = {j.name for j in p.jobs if j.kind == "build"}
    assert builds == {"build tiny/reference", "build tiny/onnx-fp32", "build tiny-lm/reference",
                      "build tiny-lm/lm-onnx-past", "build tiny-lm/lm-int8"}  # fmt: skip
    runs = {(j.model, j.variant, j.runner) for j in p.jobs if j.kind == "run"}
    assert ("tiny-lm", "reference", "null") not in runs and ("tiny", "reference", "null") in runs
    assert ("tiny-lm", "lm-int8", "ort-cpu") in runs and ("tiny", "lm-int8", "ort-cpu") not in runs
    # classifier cells: 2 batch sizes x 2 seq modes; generation cells: 2 batch sizes x with/without cache
    assert p.cells == 4 * sum(1 for j in p.jobs if j.kind == "run")
    # The classifier's keys do not depend on the causal LM sharing its matrix.
    solo = build_jobs(matrix, "tiny", ("onnx-fp32",))
    assert {j.name: j.key for j in p.jobs if j.model == "tiny" and j.kind == "build"} == {
        f"build tiny/{j.variant}": j.key for j in solo
    }


def test_spec_errors_for_causal_lms(write_matrix):
    body = LM_MATRIX.replace('fallback = "random:gpt2-tiny"', 'fallback = "hf:gpt2"')
    with pytest.raises(SpecError, match=r"models.tiny-lm.fallback: expected 'random:<arch>'"):
        load_matrix(write_matrix(body))
    body = LM_MATRIX.replace('task = "text-generation"\ndataset = "headlines9"', 'task = "text-generation"')
    with pytest.raises(SpecError, match=r"models.tiny-lm.dataset: missing; a text-generation model"):
        load_matrix(write_matrix(body))
    body = LM_MATRIX.replace("new_tokens = 8", "new_tokens = 0")
    with pytest.raises(SpecError, match=r"models.tiny-lm.generation.new_tokens: must be at least 1"):
        load_matrix(write_matrix(body))


def test_offline_tokenizer_is_reproducible(tmp_path, repo):
    import subprocess
    import sys

    out = tmp_path / "tok"
    subprocess.run([sys.executable, str(repo / "scripts" / "make_bpe_tokenizer.py"), str(out)], check=True,
                   capture_output=True)  # fmt: skip
    committed = repo / "quantmatrix" / "tokenizers" / "bpe-headlines9" / "tokenizer.json"
    assert (out / "tokenizer.json").read_bytes() == committed.read_bytes()


def test_report_has_a_generation_page(work, tmp_path):
    from report.site import render

    _run(work, "reference", "torch-eager")
    _run(work, "lm-int8", "ort-cpu")
    _run(work, "lm-onnx", "ort-cpu")
    # One cell timed while other work took the machine (and, whatever this machine did meanwhile, no
    # other): marked on the page like any disturbed cell.
    marked = work / "results" / "r" / "tiny-lm__lm-int8__ort-cpu__b1__kv-cache.json"
    for path in (work / "results" / "r").glob("*.json"):
        r = read_record(Result, path)
        if r.latency is None or r.generation is None:
            continue
        decode = r.latency.model_copy(update={"disturbed": path == marked, "background_cores": 1.5})
        write_record(r.model_copy(update={"latency": decode, "generation": r.generation.model_copy(
            update={"decode": decode})}), path)  # fmt: skip
    index = render([work / "results"], tmp_path / "site", fallbacks=False, log=lambda _: None)
    html = (index.parent / "generation.html").read_text()
    assert "random-init weights: agreement with FP32 only" in html and "not GPT-2&#39;s tokenizer" in html
    assert "decode p50 ms/token" in html and "lm-int8" in html and "skipped: graph exported without past" in html
    assert 'href="generation.html"' in index.read_text()
    assert html.count('class="warn disturbed"') == 1 and "more than 25% of the usable cores" in html
