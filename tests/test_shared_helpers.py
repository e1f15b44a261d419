"""The helpers several builders and registries share: one rule each, so each is tested once here."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from builders import Input
from builders._onnx import model_manifest, require_fp32_match
from builders._qat import FineTuneParams, Int8Check, check_int8, qat_fine_tune
from builders._training import fine_tune, train_split
from quantmatrix.data import Example, LabelledData
from quantmatrix.discovery import require_home
from quantmatrix.errors import QuantmatrixError, run_command
from quantmatrix.records import Manifest
from quantmatrix.sensitivity import QuantSettings, Scorer, scan_fields


def test_a_registered_part_must_live_in_the_file_named_after_it():
    require_home("builder", "ort-int8-dynamic", "builders.ort_int8_dynamic", "builders")
    with pytest.raises(RuntimeError, match=r"builder 'qat' must live in builders/qat\.py, not builders\.qat_pt2e"):
        require_home("builder", "qat", "builders.qat_pt2e", "builders")
    with pytest.raises(RuntimeError, match=r"runners/backends/openvino\.py"):
        require_home("runner", "openvino", "tests.fake_backend", "runners.backends")


def test_a_registry_lists_the_parts_whose_modules_its_package_holds(tmp_path, monkeypatch):
    package = tmp_path / "qm_parts"
    package.mkdir()
    init = 'from quantmatrix.discovery import Registry\n\nPARTS = Registry("part", __name__)\n'
    (package / "__init__.py").write_text(init)
    (package / "_helper.py").write_text("raise AssertionError('private modules are not imported')\n")
    for name in ("alpha-one", "beta"):
        (package / f"{name.replace('-', '_')}.py").write_text(
            f"from qm_parts import PARTS\n\n@PARTS.register({name!r}, lambda fn: fn.__name__)\ndef make(): ...\n"
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        parts = importlib.import_module("qm_parts").PARTS
        assert parts.discover() == {"alpha-one": "make", "beta": "make"}
        (package / "beta.py").unlink()
        assert parts.discover() == {"alpha-one": "make"}
        with pytest.raises(RuntimeError, match=r"part 'gamma' must live in qm_parts/gamma\.py"):
            parts.register("gamma", lambda fn: fn.__name__)(make_nothing)
    finally:
        for module in [m for m in sys.modules if m.partition(".")[0] == "qm_parts"]:
            del sys.modules[module]


def make_nothing() -> None: ...


def test_a_command_exits_with_its_own_status_or_2_after_printing_its_error(capsys):
    assert run_command(lambda: 1) == 1
    assert capsys.readouterr().err == ""

    def failing() -> int:
        raise QuantmatrixError("matrix.toml: unknown model 'x'")

    assert run_command(failing) == 2
    assert capsys.readouterr().err == "error: matrix.toml: unknown model 'x'\n"

    def crashing() -> int:
        raise ValueError("a bug, not a user error")

    with pytest.raises(ValueError):
        run_command(crashing)


def test_scan_fields_name_what_both_sensitivity_records_share():
    scorer = Scorer(fp32_logits=np.array([[2.0, 0.0], [0.0, 2.0]]), y=np.array([0, 0]), labels=("a", "b"))
    params = SimpleNamespace(granularity="group", rank_by="agreement")
    settings = QuantSettings(per_channel=True, weight_type="uint8")
    fields = scan_fields(params, settings, split="validation", examples=2, scorer=scorer, ranking=["u1", "u0"])
    assert fields == {
        "split": "validation",
        "examples": 2,
        "granularity": "group",
        "rank_by": "agreement",
        "quantization": "onnxruntime quantize_dynamic: dynamic INT8, weights uint8 per channel",
        "fp32_macro_f1": scorer.fp32_macro_f1,
        "ranking": ["u1", "u0"],
    }


def _data(n: int) -> LabelledData:
    return LabelledData("d", ("a", "b"), {"train": tuple(Example(f"t{i}", i % 2) for i in range(n))})


def test_train_split_caps_at_the_limit_and_zero_means_all():
    assert [e.text for e in train_split(_data(5), 2)] == ["t0", "t1"]
    assert len(train_split(_data(5), 0)) == 5
    assert len(train_split(_data(3), 10)) == 3


def test_fine_tune_reports_what_it_trained_in_the_manifests_words():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.zeros(2))
    x = torch.randn(10, 2)
    y = x @ torch.tensor([1.0, -2.0])

    def loss_of(idx: list[int]) -> object:
        return ((x[idx] @ w - y[idx]) ** 2).mean()

    run = fine_tune([w], loss_of, 10, epochs=2, batch_size=4, learning_rate=0.1, seed=0)
    assert run.steps == 6  # ceil(10 / 4) batches a pass, two passes
    assert run.metrics() == {"train_seconds": round(run.seconds, 2), "train_examples": 10, "train_steps": 6,
                             "train_epochs": 2}  # fmt: skip
    assert run.step_line().startswith("train: 6 steps, batch 4, lr 0.1, ")
    assert run.final_loss == pytest.approx(sum(run.losses[-6:]) / 6)


def test_an_fp32_conversion_that_changes_a_prediction_is_refused_naming_what_differs():
    clean = {"check_max_abs_logit_diff": 1e-5, "check_top1_agreement": 1.0}
    require_fp32_match(clean, 1e-3, "check_top1_agreement", "ONNX export")
    with pytest.raises(QuantmatrixError, match=r"ONNX export differs .* \(atol 0\.001\), top-1 agreement 0\.990"):
        require_fp32_match(clean | {"check_top1_agreement": 0.99}, 1e-3, "check_top1_agreement", "ONNX export")
    with pytest.raises(QuantmatrixError, match=r"max \|Δlogit\| 2\.00e-02"):
        require_fp32_match(clean | {"check_max_abs_logit_diff": 0.02}, 1e-3, "check_top1_agreement", "ONNX export")
    lm = {"check_max_abs_logit_diff": 1e-5, "check_token_agreement": 1.0, "check_cache_equal": 0.0}
    with pytest.raises(QuantmatrixError, match=r"OpenVINO IR: greedy tokens with the KV cache differ"):
        require_fp32_match(lm, 1e-3, "check_token_agreement", "OpenVINO IR")


def test_an_input_of_the_wrong_format_task_or_precision_is_refused_naming_its_role():
    m = Manifest(key="k1", builder="b", variant="v", model="m", format="onnx", precision="int8", task="t",
                 created="2026-01-01T00:00:00Z")  # fmt: skip
    src = Input(manifest=m, path=Path("."))
    src.require("x quantises ONNX", format="onnx", task="t")
    with pytest.raises(QuantmatrixError, match=r"^x quantises an FP32 ONNX model; source k1 is int8 onnx t$"):
        src.require("x quantises an FP32 ONNX model", format="onnx", precision="fp32")
    with pytest.raises(QuantmatrixError, match=r"; reference k1 is int8 onnx t$"):
        Input(manifest=m, path=Path("."), role="reference").require("x exports a torch reference", format="torch")


def test_a_model_manifest_puts_the_files_facts_ahead_of_the_builders_extra():
    ctx = SimpleNamespace(manifest=lambda **kw: kw)
    got = model_manifest(
        ctx, "params", format="onnx", entry="model.onnx", io=(["i"], ["o"]), facts={"opset": 18, "op_counts": {}},
        precision="int8", device="cpu", steps=["s"], metrics={"m": 1.0}, extra={"quantizer": "q"}, notes=["n"],
    )  # fmt: skip
    assert got == {
        "format": "onnx", "precision": "int8", "params": "params", "entry": "model.onnx", "tokenizer": "tokenizer",
        "io_inputs": ["i"], "io_outputs": ["o"], "device": "cpu", "steps": ["s"], "metrics": {"m": 1.0},
        "extra": {"opset": 18, "op_counts": {}, "quantizer": "q"}, "notes": ["n"],
    }  # fmt: skip
    assert list(got["extra"]) == ["opset", "op_counts", "quantizer"]


def _classifier_ctx(tmp_path: Path, test_logits: np.ndarray) -> SimpleNamespace:
    (tmp_path / "eval").mkdir()
    np.save(tmp_path / "eval" / "test_logits.npy", test_logits)
    splits = {
        "test": tuple(Example(f"t{i}", i % 2) for i in range(len(test_logits))),
        "validation": (Example("a", 0), Example("b", 1), Example("c", 1), Example("d", 0)),
    }
    return SimpleNamespace(data=LabelledData("d", ("x", "y"), splits), reference=SimpleNamespace(path=tmp_path))


def test_the_int8_check_scores_one_logits_function_against_the_reference_and_on_validation(tmp_path):
    ctx = _classifier_ctx(tmp_path, np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32))

    def logits_of(texts: list[str]) -> np.ndarray:  # predicts class 1 for "b" and "t1" only
        return np.array([[0.0, 1.0] if t in ("b", "t1") else [1.0, 0.0] for t in texts], dtype=np.float32)

    got = check_int8(ctx, logits_of, 2)
    assert got.reference == {"check_max_abs_logit_diff": 0.0, "check_top1_agreement": 1.0, "check_examples": 2}
    assert got.macro_f1 == pytest.approx((0.8 + 2 / 3) / 2)  # class x: P 2/3 R 1; class y: P 1 R 1/2
    assert Int8Check({"check_top1_agreement": 0.5, "check_examples": 4}, 0.81234).step_line() == (
        "check: top-1 agreement 0.500 on 4 test examples, INT8 validation macro-F1 0.8123"
    )


def test_a_qat_fine_tune_runs_with_the_params_options_and_logs_its_summary():
    torch = pytest.importorskip("torch")
    w = torch.nn.Parameter(torch.zeros(1))
    lines: list[str] = []
    ctx = SimpleNamespace(log=lines.append)
    run = qat_fine_tune(ctx, FineTuneParams(epochs=2, batch_size=3, seed=0), [w], lambda idx: (w - 1).pow(2).sum(), 5,
                        "QAT")  # fmt: skip
    assert (run.steps, run.batch_size, run.epochs, run.learning_rate) == (4, 3, 2, 2e-5)
    assert lines == [f"  QAT: 4 steps in {run.seconds:.0f}s, final loss {run.final_loss:.4f}"]


@pytest.mark.parametrize(("weight_type", "dtype"), [("int8", 3), ("uint8", 2)])
def test_dynamic_int8_quantises_the_weights_in_the_chosen_type_and_caps_the_ir_version(tmp_path, weight_type, dtype):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from builders._onnx import MAX_IR_VERSION
    from builders._ort_dynamic import quantize_dynamic_int8

    weight = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4) / 8, "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight],
    )  # fmt: skip
    src, dst = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(src))
    quantize_dynamic_int8(src, dst, QuantSettings(weight_type=weight_type), ("MatMul",))
    model = onnx.load(str(dst))
    assert model.ir_version <= MAX_IR_VERSION
    assert "MatMulInteger" in {n.op_type for n in model.graph.node}
    assert {i.data_type for i in model.graph.initializer if i.name.startswith("w")} >= {dtype}
