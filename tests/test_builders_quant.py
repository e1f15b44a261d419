"""PT2E static INT8 and QAT on the tiny model: artefacts rebuild safely, load in their runners, agree with FP32."""

from __future__ import annotations

import json

import numpy as np
import pytest

import builders
import runners
from builders._onnx import encode, load_tokenizer
from quantmatrix.plan import build_jobs
from quantmatrix.records import Manifest, Pt2eInt8Load, Result, read_record
from quantmatrix.spec import load_matrix
from quantmatrix.store import Store
from quantmatrix.torch_recipes import rebuild
from runners import LoadRequest
from runners.job import RunJob

pytestmark = pytest.mark.slow

MATRIX = """
[datasets.headlines9]
source = "bundled:headlines9"

[models.tiny]
source = "random:bert-tiny"
dataset = "headlines9"
max_length = 32

[models.tiny.finetune]
method = "full"
epochs = 2
learning_rate = 3e-3

[runners.torch-compile]
backend = "torch"
params = { compile = true, threads = 1 }

[runners.ort-cpu]
backend = "onnxruntime"
params = { threads = 1 }

[variants.torch-int8-pt2e]
builder = "torch-int8-pt2e"
params = { calibration_examples = 64 }

[variants.qat]
builder = "qat"
params = { epochs = 1, max_train_examples = 256, learning_rate = 1e-4 }

[variants.qat-pt2e]
builder = "qat-pt2e"
params = { epochs = 1, max_train_examples = 256, learning_rate = 1e-4 }

[profiles.t]
models = ["tiny"]
variants = ["torch-int8-pt2e", "qat", "qat-pt2e"]
runners = ["torch-compile", "ort-cpu"]

[profiles.t.measure]
batch_sizes = [2]
seq_modes = ["natural"]
warmup = 1
min_iterations = 3
min_seconds = 0.02
eval_examples = 100
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    (root / "matrix.toml").write_text(MATRIX)
    matrix = load_matrix(root / "matrix.toml", builders=builders.registry(), backends=runners.registry())
    failures: dict[str, str] = {}
    variants = ("torch-int8-pt2e", "qat", "qat-pt2e")
    builders.build_with_deps(matrix, "tiny", variants, Store(root / "artifacts"), failures=failures)
    assert not failures, failures
    keys = {j.variant: j.key for j in build_jobs(matrix, "tiny", variants)}
    return matrix, Store(root / "artifacts"), keys, root


def test_pt2e_artefact_is_weights_plus_calibration_and_rebuilds_deterministically(store):
    _matrix, st, keys, _ = store
    path = st.path(keys["torch-int8-pt2e"])
    manifest = read_record(Manifest, path / "manifest.json")
    assert manifest.precision == "int8" and manifest.load == Pt2eInt8Load(calibration="calibration.json")
    assert [s.split(":")[0] for s in manifest.steps] == ["link", "export", "prepare", "calibrate", "convert", "check"]
    calibration = json.loads((path / "calibration.json").read_text())
    assert sum(len(b["input_ids"]) for b in calibration) == 64
    assert not [p for p in path.rglob("*") if p.suffix in (".pt2", ".pt", ".bin", ".pkl")]
    tokenizer = load_tokenizer(path / "tokenizer")
    enc = encode(tokenizer, ["Cybersecurity breach exposes NHS patient records", "Striker seals late winner"], 32)

    import torch

    outs = []
    for _ in range(2):
        module = rebuild(path, manifest)
        with torch.no_grad():
            out = module(**{k: torch.from_numpy(v) for k, v in enc.items()})
        outs.append((out.logits if hasattr(out, "logits") else out[0]).numpy())
    np.testing.assert_array_equal(outs[0], outs[1])
    assert manifest.metrics["check_top1_agreement"] >= 0.8


def test_pt2e_runs_through_torch_compile(store):
    matrix, st, _keys, root = store
    job = RunJob(matrix, "t", "tiny", "torch-int8-pt2e", "torch-compile", artifacts=st.root,
                 results=root / "results", run_id="q", log=lambda _: None)  # fmt: skip
    job.run()
    (path,) = (root / "results" / "q").glob("tiny__torch-int8-pt2e__torch-compile__*.json")
    r = read_record(Result, path)
    assert r.status == "ok", r.reason
    assert r.runner_options["compile"] and r.runner_options["freezing"]
    assert r.agreement.top1 >= 0.8


def test_qat_trains_with_fake_quant_and_ships_onnx_int8(store):
    _matrix, st, keys, _ = store
    path = st.path(keys["qat"])
    manifest = read_record(Manifest, path / "manifest.json")
    steps = [s.split(":")[0] for s in manifest.steps]
    assert steps == ["load", "prepare", "train", "convert", "export", "quantize", "check"]
    assert manifest.format == "onnx" and manifest.precision == "int8"
    assert manifest.extra["op_counts"].get("MatMulInteger", 0) > 0
    assert {"validation_macro_f1_before", "validation_macro_f1_after_qat", "validation_macro_f1_int8"} <= set(
        manifest.metrics
    )
    assert manifest.metrics["check_top1_agreement"] >= 0.7
    info = runners.registry()["onnxruntime"]
    session = info.load(LoadRequest(path, manifest, "cpu", 1, info.params()))
    tokenizer = load_tokenizer(path / "tokenizer")
    logits = session.predict(encode(tokenizer, ["Ransomware attack shuts school district systems", "Cup final"], 32))
    assert logits.shape == (2, 9) and np.isfinite(logits).all()


def test_qat_pt2e_state_is_safetensors_and_reloads_exactly(store):
    matrix, st, keys, root = store
    path = st.path(keys["qat-pt2e"])
    manifest = read_record(Manifest, path / "manifest.json")
    steps = [s.split(":")[0] for s in manifest.steps]
    assert steps == ["link", "prepare", "train", "save", "convert", "check"]
    assert (path / "qat_state.safetensors").is_file()
    assert not [p for p in path.rglob("*") if p.suffix in (".pt2", ".pt", ".bin", ".pkl")]
    # The reload is exact: the builder's own check used this same rebuild path.
    assert manifest.metrics["check_top1_agreement"] >= 0.7
    job = RunJob(matrix, "t", "tiny", "qat-pt2e", "torch-compile", artifacts=st.root,
                 results=root / "results", run_id="q", log=lambda _: None)  # fmt: skip
    job.run()
    (res,) = (root / "results" / "q").glob("tiny__qat-pt2e__torch-compile__*.json")
    r = read_record(Result, res)
    assert r.status == "ok", r.reason


def test_qat_pt2e_trains_with_the_models_own_dropout(store):
    # torchao's move_exported_model_to_train sets every dropout to p=0.5; the builder keeps the model's p.
    import torch
    from transformers import AutoModelForSequenceClassification

    from builders.qat_pt2e import set_dropout_training
    from quantmatrix.torch_recipes import prepare_qat

    _matrix, st, keys, _ = store
    path = st.path(keys["qat-pt2e"])
    model = AutoModelForSequenceClassification.from_pretrained(path / "model", attn_implementation="eager").eval()
    example = encode(load_tokenizer(path / "tokenizer"), ["Striker seals late winner", "Rates rise"], 32)
    prepared = prepare_qat(model, {k: torch.from_numpy(v) for k, v in example.items()})
    assert set_dropout_training(prepared, True) > 0
    dropouts = [n.args[1:] for n in prepared.graph.nodes if n.target is torch.ops.aten.dropout.default]
    expected = {model.config.hidden_dropout_prob, model.config.attention_probs_dropout_prob}
    assert {p for p, _ in dropouts} <= expected and all(training for _, training in dropouts)
    set_dropout_training(prepared, False)
    assert not any(n.args[2] for n in prepared.graph.nodes if n.target is torch.ops.aten.dropout.default)
    manifest = read_record(Manifest, path / "manifest.json")
    assert "dropout nodes switched" in manifest.steps[1] and "validation_macro_f1_int8" in manifest.metrics
