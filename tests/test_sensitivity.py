"""Layer sensitivity analysis and sensitivity-guided mixed precision on the tiny model, end to end.

The tiny reference and its FP32 ONNX export come from conftest's `built` fixture; these tests add
analyses and `ort-int8-mixed` variants to a copy of its matrix and check the real graphs and records.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import TINY_MATRIX

import builders
import runners
from bench import plan
from quantmatrix import sensitivity as sens
from quantmatrix.errors import SpecError
from quantmatrix.plan import build_jobs
from quantmatrix.records import (
    Manifest,
    Result,
    SensitivityResult,
    json_schemas,
    parse_record,
    read_analysis,
    read_record,
)
from quantmatrix.spec import load_matrix
from quantmatrix.store import Store
from runners import analyses
from runners.__main__ import main as runners_main
from runners.analyses import AnalysisJob
from runners.job import RunJob

pytestmark = pytest.mark.slow

ANALYSES = """
[analyses.sens]
kind = "sensitivity"
model = "tiny"
variants = ["onnx-fp32"]
runners = ["ort-cpu"]

[analyses.sens-groups]
kind = "sensitivity"
model = "tiny"
variants = ["onnx-fp32"]
runners = ["ort-cpu"]
params = { granularity = "group", examples = 200 }

[profiles.a]
models = ["tiny"]
variants = []
runners = ["ort-cpu"]
analyses = ["sens"]
"""

# Linear layers of the 2-layer BERT: Q, K, V, attention output, FFN in, FFN out per layer, + pooler, classifier.
LINEAR_UNITS = 2 * 6 + 2


def _load(path: Path):
    return load_matrix(path, builders=builders.registry(), backends=runners.registry(), analyses=analyses.registry())


def _ops(path: Path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@pytest.fixture(scope="module")
def root(built: Path) -> Path:
    (built / "analyses.toml").write_text(TINY_MATRIX + ANALYSES)
    return built


@pytest.fixture(scope="module")
def fp32(root: Path) -> Path:
    matrix = _load(root / "analyses.toml")
    key = {j.variant: j.key for j in build_jobs(matrix, "tiny", ("onnx-fp32",))}["onnx-fp32"]
    return Store(root / "artifacts").path(key) / "model.onnx"


@pytest.fixture(scope="module")
def scanned(root: Path) -> SensitivityResult:
    """The `sens` analysis run through the CLI, as a launcher runs it."""
    argv = ["analysis", "--matrix", str(root / "analyses.toml"), "--artifacts", str(root / "artifacts"),
            "--results", str(root / "results"), "--name", "sens", "--run-id", "scan", "--profile", "a"]  # fmt: skip
    assert runners_main(argv) == 0
    record = read_analysis(root / "results" / "scan" / "analyses" / "sens.json")
    assert isinstance(record, SensitivityResult)
    return record


def test_units_are_the_models_linear_layers(fp32: Path) -> None:
    linear = sens.units(fp32, "linear")
    assert len(linear) == LINEAR_UNITS
    names = [u.name for u in linear]
    assert names[0] == "bert.encoder.layer.0.attention.self.query"
    assert "bert.encoder.layer.1.output.dense" in names and names[-2:] == ["bert.pooler.dense", "classifier"]
    assert all(len(u.nodes) == 1 for u in linear)
    groups = sens.units(fp32, "group")
    assert [g.name for g in groups] == [
        "bert.encoder.layer.0.attention", "bert.encoder.layer.0.ffn",
        "bert.encoder.layer.1.attention", "bert.encoder.layer.1.ffn", "head",
    ]  # fmt: skip
    assert [len(g.nodes) for g in groups] == [4, 2, 4, 2, 2]
    assert sorted(n for g in groups for n in g.nodes) == sorted(n for u in linear for n in u.nodes)


def test_quantize_touches_exactly_the_chosen_nodes(fp32: Path, tmp_path: Path) -> None:
    linear = {u.name: u for u in sens.units(fp32, "linear")}
    out = tmp_path / "q.onnx"
    settings = sens.QuantSettings()
    for name in ("bert.encoder.layer.0.attention.self.query", "classifier"):  # a MatMul, and a Gemm
        sens.quantize(fp32, out, settings, linear[name].nodes)
        ops = _ops(out)
        assert ops["MatMulInteger"] == 1 and ops["DynamicQuantizeLinear"] == 1, (name, ops)
    sens.quantize(fp32, out, settings, [n for u in linear.values() for n in u.nodes])
    assert _ops(out)["MatMulInteger"] == LINEAR_UNITS
    sens.quantize(fp32, out, settings, [])  # nothing selected: the FP32 model, not "everything"
    assert _ops(out)["MatMulInteger"] == 0


def test_sensitivity_scan_ranks_every_linear_layer(scanned: SensitivityResult, root: Path, fp32: Path) -> None:
    r = scanned
    assert r.status == "ok" and r.kind == "sensitivity" and r.backend == "onnxruntime"
    assert r.split == "validation" and r.examples == 400
    assert [t.unit for t in r.trials] == [u.name for u in sens.units(fp32, "linear")]
    assert sorted(r.ranking) == sorted(t.unit for t in r.trials)
    kl = {t.unit: t.mean_kl for t in r.trials}
    assert [kl[u] for u in r.ranking] == sorted(kl.values(), reverse=True)
    assert all(len(t.nodes) == 1 and t.mean_kl >= 0 and 0 <= t.agreement <= 1 for t in r.trials)
    assert all(abs(t.f1_drop - (r.fp32_macro_f1 - t.macro_f1)) < 1e-12 for t in r.trials)
    assert r.all_int8 is not None and len(r.all_int8.nodes) == LINEAR_UNITS
    # Quantising every layer drifts about as far as the worst single layer or further; errors of different
    # layers can partly cancel (measured here: 0.00165 all-INT8 vs 0.00166 for the classifier alone).
    assert r.all_int8.mean_kl > 0.9 * max(kl.values())
    # The FP32 ONNX model scores the validation split as the PyTorch reference did when it was built.
    reference = Store(root / "artifacts").load(r.reference_key or "", verify=False)
    assert r.fp32_macro_f1 == pytest.approx(reference.metrics["validation_macro_f1"], abs=2e-3)
    assert r.runner_options["intra_op_threads"] == 1 == r.threads
    assert r.wall_seconds and r.wall_seconds > 0
    # The record round-trips and validates against its exported schema's model.
    assert parse_record(SensitivityResult, r.model_dump(mode="json"), "x") == r
    assert "sensitivity.schema.json" in json_schemas()


def test_a_current_analysis_is_not_rerun(scanned: SensitivityResult, root: Path) -> None:
    job = AnalysisJob(
        _load(root / "analyses.toml"), "sens", artifacts=root / "artifacts", results=root / "results",
        run_id="scan", profile="a",
    )  # fmt: skip
    assert job.is_done() and job.key == scanned.key
    lines: list[str] = []
    job.log = lines.append
    assert job.run() == scanned
    assert any("[cached]" in line for line in lines)


def test_group_scan(root: Path) -> None:
    job = AnalysisJob(
        _load(root / "analyses.toml"), "sens-groups", artifacts=root / "artifacts", results=root / "results",
        run_id="groups", log=lambda _: None,
    )  # fmt: skip
    r = job.run()
    assert isinstance(r, SensitivityResult) and r.status == "ok", r.reason
    assert r.examples == 200 and r.granularity == "group" and len(r.trials) == 5
    assert {len(t.nodes) for t in r.trials} == {2, 4}


def test_missing_artefact_gives_a_failed_record(tmp_path: Path, root: Path) -> None:
    (tmp_path / "m.toml").write_text(TINY_MATRIX + ANALYSES)
    job = AnalysisJob(
        _load(tmp_path / "m.toml"), "sens", artifacts=tmp_path / "empty", results=tmp_path / "results",
        run_id="x", log=lambda _: None,
    )  # fmt: skip
    r = job.run()
    assert r.status == "failed" and "not found" in (r.reason or "")
    assert read_analysis(job.path).status == "failed" and not job.is_done()


def _mixed(root: Path, name: str, params: str) -> tuple[Manifest, Path]:
    body = f'\n[variants.{name}]\nfrom = "onnx-fp32"\nbuilder = "ort-int8-mixed"\nparams = {{ {params} }}\n'
    path = root / f"{name}.toml"
    path.write_text(TINY_MATRIX + ANALYSES + body)
    matrix = _load(path)
    store = Store(root / "artifacts")
    built = builders.build_with_deps(matrix, "tiny", (name,), store, log=lambda _: None)
    return built[name], store.path(built[name].key) / "model.onnx"


def test_mixed_precision_search_finds_the_smallest_passing_k(scanned: SensitivityResult, root: Path) -> None:
    # A target the fully quantised model misses (half its KL from FP32): the search must keep some layers FP32.
    target = scanned.all_int8.mean_kl / 2  # type: ignore[union-attr]
    manifest, model = _mixed(root, "mixed-kl", f"max_mean_kl = {target!r}")
    search = manifest.search
    assert search is not None
    trials = search.trials
    k = search.chosen_k
    assert search.mode == "search" and search.passed and k is not None and k >= 1
    assert [t.k for t in trials] == list(range(k + 1))  # k = 0, 1, ... in order, every trial recorded
    assert [t.passed for t in trials] == [False] * k + [True]
    assert all(t.mean_kl > target for t in trials[:-1]) and trials[-1].mean_kl <= target
    assert search.keep_fp32 == search.ranking[:k] and len(search.scan) == LINEAR_UNITS
    # The graph: exactly the kept layers stay FP32 MatMul/Gemm, every other Linear is INT8.
    ops = _ops(model)
    assert ops["MatMulInteger"] == LINEAR_UNITS - k
    graph = {n.name: n.op_type for n in onnx.load(str(model)).graph.node}
    units = {u.name: u for u in sens.units(root / "artifacts" / manifest.inputs["source"] / "model.onnx", "linear")}
    for name in search.keep_fp32:
        for node in units[name].nodes:
            # The quantiser splits every Gemm into `<name>_MatMul` + Add, quantised or not.
            assert graph.get(node) in ("MatMul", "Gemm") or graph.get(f"{node}_MatMul") == "MatMul", (name, node)
    assert manifest.metrics["kept_fp32_units"] == k and manifest.notes and "smallest k" in manifest.notes[0]


def test_mixed_precision_explicit_layers_and_k(root: Path) -> None:
    manifest, model = _mixed(root, "mixed-keep", 'keep_fp32 = ["classifier", "bert.pooler.dense"]')
    ops = _ops(model)
    # FP32 left: the two kept Linears and the 2 x 2 attention-score MatMuls (activations only, never quantised).
    assert ops["MatMulInteger"] == LINEAR_UNITS - 2 and ops["MatMul"] + ops["Gemm"] == 2 + 4
    assert manifest.search is not None and manifest.search.mode == "keep_fp32" and not manifest.search.scan
    manifest, model = _mixed(root, "mixed-k", 'k = 1, granularity = "group"')
    search = manifest.search
    assert search is not None and search.mode == "k" and len(search.keep_fp32) == 1 and len(search.scan) == 5
    kept = {"head": 2}.get(search.keep_fp32[0], 4 if search.keep_fp32[0].endswith("attention") else 2)
    assert _ops(model)["MatMulInteger"] == LINEAR_UNITS - kept


def test_mixed_precision_unknown_layer_is_a_clear_error(root: Path) -> None:
    with pytest.raises(Exception, match=r"keep_fp32: unknown unit 'bert.nope'.*bert.encoder.layer.0"):
        _mixed(root, "mixed-bad", 'keep_fp32 = ["bert.nope"]')


@pytest.fixture(scope="module")
def mixed_run(root: Path) -> Path:
    """The `mixed-keep` variant measured by a run job on ort-cpu: results under root/results/mixed."""
    _mixed(root, "mixed-keep", 'keep_fp32 = ["classifier", "bert.pooler.dense"]')
    path = root / "mixed-keep.toml"
    text = path.read_text().replace('variants = ["onnx-fp32", "ort-int8-dynamic"]', 'variants = ["mixed-keep"]')
    path.write_text(text)
    job = RunJob(_load(path), "t", "tiny", "mixed-keep", "ort-cpu", artifacts=root / "artifacts",
                 results=root / "results", run_id="mixed", log=lambda _: None)  # fmt: skip
    results = job.run()
    assert results and all(r.status == "ok" for r in results), [r.reason for r in results]
    return job.path(job.cells[0])


def test_a_run_of_the_mixed_variant_records_its_search(mixed_run: Path) -> None:
    r = read_record(Result, mixed_run)
    assert r.mixed_precision is not None and r.mixed_precision.keep_fp32 == ["classifier", "bert.pooler.dense"]
    assert r.mixed_precision.trials[0].quantized_nodes == LINEAR_UNITS - 2
    assert r.build is not None and r.build.builder == "ort-int8-mixed"


def test_report_renders_the_analyses(scanned: SensitivityResult, mixed_run: Path, root: Path, tmp_path: Path) -> None:
    from report.site import render

    render([root / "results"], tmp_path / "site", fallbacks=False, log=lambda _: None)
    html = (tmp_path / "site" / "analyses.html").read_text()
    assert 'id="sensitivity"' in html and 'id="mixed-precision"' in html
    assert scanned.ranking[0] in html and "bert.pooler.dense" in html
    assert 'data-kind="sensitivity"' in html and 'data-kind="mixed"' in html
    raw = tmp_path / "site" / "raw" / scanned.fingerprint.machine_id / "scan" / "analyses" / "sens.json"
    assert read_analysis(raw) == scanned
    index = (tmp_path / "site" / "index.html").read_text()
    assert "invalid file" not in index  # analysis records are not mistaken for results


def test_bench_plans_analyses_after_what_they_read(root: Path) -> None:
    matrix = _load(root / "analyses.toml")
    p = plan(
        matrix, "a", "cpu",
        builder_formats={k: v.output_format for k, v in builders.registry().items()},
        backends=runners.registry(), run_id="r",
    )  # fmt: skip
    names = [j.name for j in p.jobs]
    # The profile lists no variant, yet the analysis reads onnx-fp32: its build is planned before it.
    assert names.index("build tiny/onnx-fp32") < names.index("analysis sens")
    job = p.by_name()["analysis sens"]
    assert job.kind == "analysis" and set(job.deps) == {"build tiny/onnx-fp32", "build tiny/reference"}
    assert job.argv[:3] == ["-m", "runners", "analysis"] and job.argv[job.argv.index("--name") + 1] == "sens"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('kind = "sensitivty"\nmodel = "tiny"', r"analyses.x.kind: unknown analysis kind 'sensitivty'"),
        ('kind = "sensitivity"\nmodel = "tiny"\nvariants = ["onnx-fp32", "ort-int8-dynamic"]\nrunners = ["ort-cpu"]',
         r"analyses.x.variants: a sensitivity scan takes exactly one FP32 ONNX variant"),
        ('kind = "sensitivity"\nmodel = "tiny"\nvariants = ["onnx-fp32"]\nrunners = ["torch-eager"]',
         r"analyses.x.runners\[0\]: runner 'torch-eager' has backend 'torch'"),
        ('kind = "sensitivity"\nmodel = "tiny"\nvariants = ["onnx-fp32"]\nrunners = ["ort-cpu"]\n'
         'params = { granularity = "layer" }', r"analyses.x.params.granularity: expected one of \['linear', 'group'\]"),
        ('kind = "sensitivity"\nmodel = "tiny"\nvariants = ["onnx-fp32"]\nrunners = ["ort-cpu"]\nsplit = "dev"',
         r"analyses.x.split: expected one of"),
        ('kind = "sensitivity"\nmodel = "huge"', r"analyses.x.model: unknown model 'huge'"),
        ('kind = "sensitivity"\nmodel = "tiny"\nvariants = ["onnx-fp33"]',
         r"analyses.x.variants\[0\]: unknown variant"),
        ('kind = "sensitivity"\nmodel = "tiny"\nvariant = "onnx-fp32"', r"analyses.x.variant: unknown key"),
    ],
)  # fmt: skip
def test_bad_analysis_keys_are_one_line_errors(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "m.toml"
    path.write_text(TINY_MATRIX + f"\n[analyses.x]\n{body}\n")
    with pytest.raises(SpecError, match=message) as e:
        _load(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_profile_lists_only_known_analyses(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(
        TINY_MATRIX.replace(
            'runners = ["torch-eager", "ort-cpu", "null"]\n', 'runners = ["ort-cpu"]\nanalyses = ["nope"]\n', 1
        )
    )
    with pytest.raises(SpecError, match=r"profiles.t.analyses\[0\]: unknown analysis 'nope'"):
        _load(path)


def test_mixed_params_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    body = '\n[variants.m]\nfrom = "onnx-fp32"\nbuilder = "ort-int8-mixed"\n'
    body += 'params = { k = 2, keep_fp32 = ["classifier"] }\n'
    path.write_text(TINY_MATRIX + body)
    with pytest.raises(SpecError, match=r"variants.m.params: give keep_fp32 or k, not both"):
        _load(path)


def test_rank_orders_by_the_chosen_drop() -> None:
    from quantmatrix.records import SensitivityTrial

    def t(unit: str, f1: float, agr: float, kl: float) -> SensitivityTrial:
        return SensitivityTrial(unit=unit, nodes=[unit], macro_f1=0.9 - f1, accuracy=0.9, f1_drop=f1, agreement=1 - agr,
                                agreement_drop=agr, mean_kl=kl, max_abs_dlogit=0.0, flips=0, quantize_seconds=0,
                                eval_seconds=0)  # fmt: skip

    trials = [t("a", 0.00, 0.01, 3e-3), t("b", 0.02, 0.00, 1e-3), t("c", 0.01, 0.03, 2e-3)]
    assert sens.rank(trials, "kl") == ["a", "c", "b"]
    assert sens.rank(trials, "agreement") == ["c", "a", "b"]
    assert sens.rank(trials, "macro_f1") == ["b", "c", "a"]


def test_encoded_split_restores_split_order(fp32: Path, root: Path) -> None:
    from builders._onnx import encode, load_tokenizer, ort_session

    tok = load_tokenizer(fp32.parent / "tokenizer")
    texts = ["a much longer headline about markets and rates today", "short", "a medium one here"]
    names = [i.name for i in ort_session(fp32).get_inputs()]
    enc = sens.encode_split(tok, texts, names, 32, batch_size=2)
    session = ort_session(fp32)
    logits = enc.logits(lambda feed: session.run(None, dict(feed))[0])
    one_by_one = np.concatenate([session.run(None, encode(tok, [t], 32))[0] for t in texts])
    np.testing.assert_allclose(logits, one_by_one, atol=1e-4)


@pytest.mark.parametrize("engine", ["torch.ao", "torchao"])
def test_torch_dynamic_int8_keeps_the_named_modules_fp32(root: Path, engine: str) -> None:
    """The torch route of mixed precision: a module filter (torchao `filter_fn`, a torch.ao qconfig per name)."""
    import torch

    from quantmatrix.torch_recipes import rebuild

    name = f"torch-keep-{engine.replace('.', '')}"
    body = f'\n[variants.{name}]\nbuilder = "torch-int8-dynamic"\n'
    body += f'params = {{ engine = "{engine}", keep_fp32 = ["classifier", "bert.encoder.layer.0.attention"] }}\n'
    path = root / f"{name}.toml"
    path.write_text(TINY_MATRIX + body)
    store = Store(root / "artifacts")
    manifest = builders.build_with_deps(_load(path), "tiny", (name,), store, log=lambda _: None)[name]
    kept = manifest.extra["kept_fp32_linear"]
    assert kept == [
        f"bert.encoder.layer.0.attention.{m}" for m in ("self.query", "self.key", "self.value", "output.dense")
    ] + ["classifier"]
    assert manifest.extra["quantized_linear"] == LINEAR_UNITS - 5
    model = rebuild(store.path(manifest.key), manifest)  # what the torch runner loads
    fp32 = {n for n, m in model.named_modules() if type(m) is torch.nn.Linear and type(m.weight) is torch.nn.Parameter}
    assert fp32 == set(kept)
