"""ONNX Runtime dynamic INT8 as the builders run it: their weight options, the quantiser call, the saved model.

Their params extend `QuantSettings` (per_channel, reduce_range, weight_type), the options the
sensitivity scan quantises each unit with, so a ranking and a build mean the same by them.
reduce_range (7-bit weights) avoids u8*s8 saturation on x86 CPUs without VNNI, at some accuracy cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from builders._onnx import save_model
from quantmatrix.sensitivity import QuantSettings, ort_dynamic_int8


def quantize_dynamic_int8(src: Path, dst: Path, weights: QuantSettings, op_types: Sequence[str] = ()) -> None:
    """Dynamic INT8 of `src`'s `op_types` (empty: every type quantize_dynamic supports), saved to `dst` as
    `save_model` writes it."""
    import onnx

    ort_dynamic_int8(src, dst, weights, op_types=op_types)
    save_model(onnx.load(str(dst)), dst)
