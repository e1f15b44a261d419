"""The null runner: returns preallocated logits, so timing it measures the harness's own overhead."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantmatrix.capabilities import Capability
from runners import LoadRequest, Skip, runner


@dataclass(frozen=True)
class NullParams:
    """No options: the null runner does no work by design."""


class NullSession:
    def __init__(self, input_names: tuple[str, ...], num_labels: int) -> None:
        self.input_names = input_names
        self._num_labels = num_labels
        self._cache: dict[int, np.ndarray] = {}

    def predict(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        batch = len(next(iter(inputs.values())))
        out = self._cache.get(batch)
        if out is None:
            out = self._cache[batch] = np.zeros((batch, self._num_labels), dtype=np.float32)
        return out

    def options(self) -> dict[str, Any]:
        return {}


@runner(
    "null",
    params=NullParams,
    formats=("torch", "onnx", "tensorrt"),
    devices=("cpu", "cuda"),
    capabilities={Capability.MEASURES_OVERHEAD},
)
def load(request: LoadRequest) -> NullSession:
    if request.device == "cuda":
        from quantmatrix.gpu import probe_cuda

        # Harness overhead belongs next to the GPU numbers it qualifies: measured on a GPU machine only.
        if (reason := probe_cuda().reason) is not None:
            raise Skip(f"needs CUDA: {reason}")
    names = tuple(t.name for t in request.manifest.io_inputs)
    return NullSession(names, len(request.manifest.id2label))
