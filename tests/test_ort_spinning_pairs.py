"""scripts/ort_spinning_pairs.py (the spinning experiment behind ort-cpu's force_spinning_stop) runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper


def _model(path: Path) -> None:
    # input_ids -> float -> MatMul with a fixed matrix: enough work for a timed run, no download.
    weights = helper.make_tensor("w", TensorProto.FLOAT, [64, 64], [0.01] * 64 * 64)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input_ids"], ["x"], to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["x", "w"], ["logits"]),
        ],
        "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 64])],
        [weights],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), str(path))


def test_two_identical_processes_take_turns_and_their_ratio_is_printed(repo: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    _model(model)
    script = repo / "scripts" / "ort_spinning_pairs.py"
    cmd = [sys.executable, str(script), str(model), "--setting", "forcestop", "--launches", "2", "--rounds", "3"]
    out = subprocess.run([*cmd, "--length", "64"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    launches = re.findall(r"forcestop launch \d: A [\d.]+ ms, B [\d.]+ ms, A/B ([\d.]+)", out.stdout)
    assert len(launches) == 2 and all(float(r) > 0 for r in launches)
    assert re.search(r"forcestop: A/B [\d.]+-[\d.]+ over 2 launches, sd of their logs", out.stdout)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    died = subprocess.run([*cmd[:2], str(broken)], capture_output=True, text=True, timeout=120)
    assert died.returncode != 0 and "broken.onnx: a timing process died" in died.stderr
    missing = subprocess.run([sys.executable, str(script), str(tmp_path / "none.onnx")], capture_output=True, text=True)
    assert missing.returncode != 0 and "none.onnx: no such file" in missing.stderr
