"""The session the onnxruntime and openvino backends share, on a stand-in graph with ORT's session surface."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from quantmatrix.causal_lm import OrtLM
from runners import Skip
from runners.graph_backend import GraphSession, import_or_skip


class FakeGraph:
    """Answers like an InferenceSession: named inputs and outputs, `run` returns the outputs asked for."""

    def __init__(self, inputs: list[str], outputs: list[str]) -> None:
        self._inputs = inputs
        self._outputs = outputs
        self.feeds: list[dict[str, np.ndarray]] = []

    def get_inputs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(name=n, shape=[None, 2, None, 4]) for n in self._inputs]

    def get_outputs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(name=n) for n in self._outputs]

    def run(self, outputs: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.feeds.append(feed)
        return [np.full(2, self._outputs.index(name)) for name in outputs]


def test_inputs_are_bound_by_the_graphs_names_and_the_logits_output_returned():
    graph = FakeGraph(["input_ids", "attention_mask"], ["hidden", "logits"])
    session = GraphSession(graph, {"threads": 2})
    ids = np.ones((1, 3), dtype=np.int64)
    out = session.predict({"attention_mask": ids, "input_ids": ids, "token_type_ids": ids})
    assert session.input_names == ("input_ids", "attention_mask")
    assert list(graph.feeds[0]) == ["input_ids", "attention_mask"]  # what the graph lacks is not fed
    assert out.tolist() == [1, 1]  # "logits", wherever it stands
    assert GraphSession(FakeGraph(["x"], ["probs", "extra"]), {}).output == "probs"


def test_options_are_a_copy_and_the_same_graph_steps_as_a_causal_lm():
    graph = FakeGraph(["input_ids", "attention_mask"], ["logits"])
    session = GraphSession(graph, {"threads": 2})
    session.options()["threads"] = 8
    assert session.options() == {"threads": 2}
    stepper, options = session.as_lm()
    assert isinstance(stepper, OrtLM) and options == {"threads": 2}
    assert stepper.logits(np.ones((1, 3), dtype=np.int64)).tolist() == [0, 0]
    assert list(graph.feeds[-1]) == ["input_ids", "attention_mask"]


def test_a_missing_library_skips_the_cell_naming_it():
    assert import_or_skip("json").dumps([]) == "[]"
    with pytest.raises(Skip, match=r"^quantmatrix_no_such_library is not installed$"):
        import_or_skip("quantmatrix_no_such_library")
