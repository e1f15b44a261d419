"""The helpers several builders and registries share: one rule each, so each is tested once here."""

from __future__ import annotations

import pytest

from builders._onnx import require_fp32_match
from builders._training import fine_tune, train_split
from quantmatrix.data import Example, LabelledData
from quantmatrix.discovery import require_home
from quantmatrix.errors import QuantmatrixError


def test_a_registered_part_must_live_in_the_file_named_after_it():
    require_home("builder", "ort-int8-dynamic", "builders.ort_int8_dynamic", "builders")
    with pytest.raises(RuntimeError, match=r"builder 'qat' must live in builders/qat\.py, not builders\.qat_pt2e"):
        require_home("builder", "qat", "builders.qat_pt2e", "builders")
    with pytest.raises(RuntimeError, match=r"runners/backends/openvino\.py"):
        require_home("runner", "openvino", "tests.fake_backend", "runners.backends")


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
