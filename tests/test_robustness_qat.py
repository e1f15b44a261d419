"""Robustness under typos and PTQ vs QAT, end to end on the tiny model: real runs -> results -> report tables.

One module fixture builds the PTQ static, per-channel dynamic and QAT variants next to the session's
tiny artefacts and runs a profile with `robustness_levels`; the tests read what those runs wrote.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MATRIX

import builders
import runners
from quantmatrix.plan import build_jobs
from quantmatrix.records import Result, read_record
from quantmatrix.spec import load_matrix
from quantmatrix.store import Store
from quantmatrix.typos import perturb
from runners.job import RunJob

pytestmark = pytest.mark.slow

EXTRA = """
[variants.ort-int8-dynamic-per-channel]
from = "onnx-fp32"
builder = "ort-int8-dynamic"
params = { per_channel = true }

[variants.ort-int8-static-qdq-per-channel]
from = "onnx-fp32"
builder = "ort-int8-static"
params = { per_channel = true, calibration_examples = 32 }

[variants.qat-ort-int8]
builder = "qat"
params = { epochs = 1, max_train_examples = 64, check_examples = 32 }

[profiles.analyses]
models = ["tiny"]
variants = ["onnx-fp32", "ort-int8-dynamic", "ort-int8-dynamic-per-channel", "ort-int8-static-qdq-per-channel",
            "qat-ort-int8"]
runners = ["torch-eager", "ort-cpu"]

[profiles.analyses.measure]
batch_sizes = [1]
seq_modes = ["natural"]
warmup = 1
min_iterations = 3
min_seconds = 0.02
eval_examples = 120
robustness_levels = [0.0, 0.1, 0.2]
robustness_seed = 7
"""
RUNS = [
    ("reference", "torch-eager"),
    ("onnx-fp32", "ort-cpu"),
    ("ort-int8-dynamic", "ort-cpu"),
    ("ort-int8-dynamic-per-channel", "ort-cpu"),
    ("ort-int8-static-qdq-per-channel", "ort-cpu"),
    ("qat-ort-int8", "ort-cpu"),
]


@pytest.fixture(scope="module")
def analysed(built, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("analysed") / "w"
    shutil.copytree(built, work)
    (work / "matrix.toml").write_text(TINY_MATRIX + EXTRA)
    matrix = load_matrix(work / "matrix.toml", builders=builders.registry(), backends=runners.registry())
    builders.build_with_deps(
        matrix, "tiny", ("ort-int8-dynamic-per-channel", "ort-int8-static-qdq-per-channel", "qat-ort-int8"),
        Store(work / "artifacts"), log=lambda _: None,
    )  # fmt: skip
    for variant, runner in RUNS:
        RunJob(matrix, "analyses", "tiny", variant, runner, artifacts=work / "artifacts", results=work / "results",
               run_id="a", log=lambda _: None).run()  # fmt: skip
    return work


def _results(work: Path) -> dict[str, Result]:
    out = {}
    for path in sorted((work / "results" / "a").glob("*.json")):
        r = read_record(Result, path)
        out[r.cell.variant] = r
    return out


def test_every_variant_gets_quality_at_each_typo_rate(analysed):
    results = _results(analysed)
    assert set(results) == {v for v, _ in RUNS}
    from quantmatrix.data import load_dataset

    matrix = load_matrix(analysed / "matrix.toml")
    texts = [e.text for e in load_dataset(matrix.datasets["headlines9"]).split("test")][:120]
    for variant, r in results.items():
        assert r.status == "ok", r.reason
        rob = r.robustness
        assert rob is not None and rob.seed == 7 and [lv.rate for lv in rob.levels] == [0.0, 0.1, 0.2]
        clean = rob.levels[0]
        # Rate 0 is the clean test split: the same numbers as the run's own quality and agreement.
        assert (clean.accuracy, clean.macro_f1) == (r.quality.accuracy, r.quality.macro_f1)
        assert clean.agreement == pytest.approx(r.agreement.top1) and clean.flips == 0 and clean.words_changed == 0
        for lv in rob.levels[1:]:
            assert lv.examples == 120 and abs(lv.words_changed / lv.words - lv.rate) < 0.35 * lv.rate
            assert 0 <= lv.macro_f1 <= 1 and lv.agreement is not None and lv.reference_macro_f1 is not None
            assert len(lv.flipped) == min(lv.flips, 10)
            perturbed = perturb(texts, lv.rate, 7).texts
            for f in lv.flipped:
                i = texts.index(f.text)
                assert f.perturbed == perturbed[i] != f.text and f.clean_top != f.perturbed_top
        if variant == "reference":
            # The FP32 reference against itself on the same perturbed texts: agreement must be exact.
            assert all(lv.agreement == 1.0 for lv in rob.levels[1:])
            assert [lv.macro_f1 for lv in rob.levels[1:]] == [lv.reference_macro_f1 for lv in rob.levels[1:]]
    # Typos hurt somewhere: at 20% some prediction of some variant flips.
    assert sum(r.robustness.levels[2].flips for r in results.values()) > 0
    # The reference's logits on the perturbed texts were computed once and cached for every other job.
    ref_key = results["onnx-fp32"].reference_key
    cached = sorted((analysed / "artifacts" / ".robustness" / ref_key).glob("*.npy"))
    assert len(cached) == 2 and all(np.load(p, allow_pickle=False).shape == (120, 9) for p in cached)


def test_results_carry_the_build_record_the_report_needs(analysed):
    results = _results(analysed)
    matrix = load_matrix(analysed / "matrix.toml")
    keys = {j.variant: j.key for j in build_jobs(matrix, "tiny", ("qat-ort-int8",))}
    qat = results["qat-ort-int8"].build
    manifest = Store(analysed / "artifacts").load(keys["qat-ort-int8"], verify=False)
    assert qat.builder == "qat" and qat.build_seconds == manifest.build_seconds > 0
    assert qat.metrics["train_examples"] == 64 and qat.metrics["train_epochs"] == 1 and qat.metrics["train_steps"] == 2
    assert any(s.startswith("train:") for s in qat.steps)


def test_ptq_vs_qat_comparison_and_the_analyses_page(analysed, tmp_path):
    from report import analyses, load, render

    loaded = load([analysed / "results"])
    (c,) = analyses.ptq_vs_qat(loaded)
    assert (c.model, c.runner) == ("tiny", "ort-cpu")
    roles = {r["variant"]: r["role"] for r in c.rows}
    assert roles == {
        "onnx-fp32": "FP32",
        "ort-int8-dynamic": "PTQ dynamic",
        "ort-int8-dynamic-per-channel": "PTQ dynamic",
        "ort-int8-static-qdq-per-channel": "PTQ static",
        "qat-ort-int8": "QAT",
    }
    rows = {r["variant"]: r for r in c.rows}
    results = _results(analysed)
    for name, row in rows.items():
        assert row["macro_f1"] == results[name].quality.macro_f1 and row["verdict"] == results[name].verdict
        assert row["ratio"] == pytest.approx(row["macro_f1"] / rows["onnx-fp32"]["macro_f1"])
        assert row["p50_ms"] == results[name].latency.p50
    # QAT ends in dynamic INT8 with per-channel weights: exactly one PTQ variant uses the same scheme.
    assert [n for n, r in rows.items() if r["same_format"]] == ["ort-int8-dynamic-per-channel", "qat-ort-int8"]
    assert rows["qat-ort-int8"]["train_examples"] == 64 and rows["qat-ort-int8"]["build_seconds"] > 0
    ptq_pass = any(results[n].verdict == "pass" for n, r in roles.items() if r.startswith("PTQ"))
    assert c.ptq_enough is ptq_pass and c.answer.startswith("PTQ is enough" if ptq_pass else "PTQ is not enough")

    render([analysed / "results"], tmp_path / "site", fallbacks=False, log=lambda _: None)
    html = (tmp_path / "site" / "analyses.html").read_text()
    assert "PTQ vs QAT" in html and "Robustness under typos" in html and "qat-ort-int8" in html
    assert 'href="analyses.html"' in (tmp_path / "site" / "index.html").read_text()
