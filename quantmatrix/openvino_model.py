"""OpenVINO models for builders and the openvino runner: ONNX -> IR, CPU compilation, inference by name.

`OvModel` also offers ONNX Runtime's session surface (get_inputs / get_outputs / run), so the
causal-LM stepper written for ONNX Runtime (`causal_lm.OrtLM`) drives an OpenVINO model unchanged.
Imports openvino lazily.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from quantmatrix.errors import QuantmatrixError
from quantmatrix.records import TensorSpec

IR_FILE = "model.xml"  # its weights sit next to it in model.bin (ov.save_model's convention)
_DTYPES = {"i64": "int64", "i32": "int32", "f32": "float32", "f16": "float16", "bf16": "bfloat16", "u8": "uint8"}
_LOCATION = re.compile(r"^(Exception from |Check '.*' failed at )\S+:\d+:?")


def clean_error(e: BaseException) -> str:
    """OpenVINO's message without the C++ source locations it stacks in front of the reason."""
    kept = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not _LOCATION.match(ln.strip())]
    return " ".join(kept) or " ".join(str(e).split()) or type(e).__name__


def convert_onnx(onnx_path: Path, xml_path: Path) -> Any:
    """Convert an ONNX file to an FP32 IR (weights kept FP32) at `xml_path`; returns the ov.Model."""
    import openvino as ov

    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as e:  # openvino.tools.ovc.error.Error or a frontend RuntimeError
        raise QuantmatrixError(f"OpenVINO cannot convert {onnx_path.name}: {clean_error(e)}") from None
    save_ir(model, xml_path)
    return model


def save_ir(model: Any, xml_path: Path) -> None:
    import openvino as ov

    # compress_to_fp16 defaults to True: it would silently halve an FP32 variant's weights.
    ov.save_model(model, str(xml_path), compress_to_fp16=False)


def read_model(path: Path) -> Any:
    import openvino as ov

    try:
        return ov.Core().read_model(str(path))
    except Exception as e:
        raise QuantmatrixError(f"OpenVINO cannot read {path.name}: {clean_error(e)}") from None


def io_specs(model: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output tensor specs of an ov.Model or compiled model (dynamic dims as '?')."""

    def spec(port: Any) -> TensorSpec:
        shape: list[int | str] = ["?" if d.is_dynamic else d.get_length() for d in port.get_partial_shape()]
        dtype = port.get_element_type().get_type_name()
        return TensorSpec(name=port.get_any_name(), dtype=_DTYPES.get(dtype, dtype), shape=shape)

    return [spec(p) for p in model.inputs], [spec(p) for p in model.outputs]


class _Port:
    """A port as ONNX Runtime's NodeArg shows one: a name and a shape (None for a dynamic dim)."""

    def __init__(self, port: Any) -> None:
        self.name = port.get_any_name()
        self.shape = [None if d.is_dynamic else d.get_length() for d in port.get_partial_shape()]


class OvModel:
    """A compiled model with one infer request; every input and output is addressed by tensor name."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self._request = compiled.create_infer_request()
        self.input_names = tuple(p.get_any_name() for p in compiled.inputs)
        self.output_names = tuple(p.get_any_name() for p in compiled.outputs)

    def infer(self, feed: Mapping[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        result = self._request.infer({k: np.ascontiguousarray(v) for k, v in feed.items()})
        # The request reuses its output buffers on the next call: hand back copies.
        return [np.array(result[self.compiled.output(n)]) for n in outputs]

    def get_inputs(self) -> list[_Port]:
        return [_Port(p) for p in self.compiled.inputs]

    def get_outputs(self) -> list[_Port]:
        return [_Port(p) for p in self.compiled.outputs]

    def run(self, outputs: list[str] | None, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self.infer(feed, list(outputs or self.output_names))


def compile_cpu(model: Any, config: Mapping[str, Any], what: str) -> OvModel:
    """`model` (an ov.Model or a file) compiled by the CPU plugin with `config`; `what` names it in errors."""
    import openvino as ov

    try:
        compiled = ov.Core().compile_model(model if not isinstance(model, Path) else str(model), "CPU", dict(config))
    except Exception as e:
        raise QuantmatrixError(f"OpenVINO's CPU plugin rejected {what} with {dict(config)}: {clean_error(e)}") from None
    return OvModel(compiled)


def version() -> str:
    import openvino as ov

    return str(ov.get_version())
