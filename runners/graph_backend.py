"""What the backends that run an exported graph (onnxruntime, openvino) share: their library, and one session class.

An ORT InferenceSession and OpenVINO's OvModel both answer `get_inputs`, `get_outputs` and
`run(outputs, feed)` by tensor name, so one session class serves both, and the same graph steps as a
causal LM through quantmatrix.causal_lm.OrtLM.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from runners import Skip

if TYPE_CHECKING:
    from quantmatrix.causal_lm import Stepper


def import_or_skip(library: str) -> ModuleType:
    """The backend's library, imported only when a cell loads; a machine without it skips the cell."""
    try:
        return importlib.import_module(library)
    except ImportError:
        raise Skip(f"{library} is not installed") from None


class GraphSession:
    """Inputs bound by the graph's own names; the `logits` output returned, else the first output."""

    def __init__(self, graph: Any, options: dict[str, Any]) -> None:
        self.graph = graph
        self.input_names = tuple(i.name for i in graph.get_inputs())
        outputs = [o.name for o in graph.get_outputs()]
        self.output = "logits" if "logits" in outputs else outputs[0]
        self._options = options

    def predict(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.graph.run([self.output], {k: inputs[k] for k in self.input_names})[0]

    def options(self) -> dict[str, Any]:
        return dict(self._options)

    def as_lm(self) -> tuple[Stepper, dict[str, Any]]:
        """The same graph as a causal-LM Stepper for generation, and the options to record with it."""
        from quantmatrix.causal_lm import OrtLM

        return OrtLM(self.graph), self.options()
