"""ONNX Runtime static INT8 quantisation (QDQ), calibrated on the dataset's calibration split.

Steps: pre-process (shape inference) -> calibrate (a reader over the calibration split, method a
parameter) -> quantize_static in QDQ format (MatMul/Gemm only by default) -> check against the reference.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from builders import BuildContext, builder, link_tree
from builders._onnx import (
    batches,
    load_tokenizer,
    onnx_manifest,
    save_model,
    validation_check,
)
from quantmatrix.errors import QuantmatrixError
from quantmatrix.progress import Progress
from quantmatrix.records import Manifest

_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile", "distribution": "Distribution"}


@dataclass(frozen=True)
class OrtInt8StaticParams:
    calibration_method: Literal["minmax", "entropy", "percentile", "distribution"] = "minmax"
    calibration_examples: int = 200
    calibration_batch_size: int = 8
    op_types: tuple[str, ...] = ("MatMul", "Gemm")
    per_channel: bool = False
    # uint8 activations + int8 weights is ONNX Runtime's recommendation for x86 CPUs.
    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    reduce_range: bool = False
    # Zero-point-free activations (ORT's ActivationSymmetric): what TensorRT's explicit INT8 needs.
    symmetric_activations: bool = False
    check_examples: int = 128


class CalibrationReader:
    """Feeds tokenised calibration batches (padded to their longest member) to the calibrator."""

    def __init__(self, feeds: list[dict[str, np.ndarray]], progress: Progress | None = None) -> None:
        self._feeds = iter(feeds)
        self._given = 0
        self._progress = progress

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed = next(self._feeds, None)
        if feed is not None and self._progress is not None:
            # A batch is handed over when the one before it has run through the model: close enough.
            self._progress.update(self._given)
            self._given += 1
        return feed


@builder("ort-int8-static", params=OrtInt8StaticParams, output_format="onnx")
def build(ctx: BuildContext, params: OrtInt8StaticParams) -> Manifest:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src = ctx.source
    src.require("ort-int8-static quantises an ONNX model", format="onnx")
    tokenizer = load_tokenizer(src.path / (src.manifest.tokenizer or "tokenizer"))
    calibration = [e.text for e in ctx.data.split("calibration")[: params.calibration_examples]]
    if not calibration:
        raise QuantmatrixError(f"dataset {ctx.data.name} has an empty calibration split")
    input_names = {t.name for t in src.manifest.io_inputs}
    feeds = [
        {k: v for k, v in feed.items() if k in input_names}
        for feed in batches(tokenizer, calibration, ctx.model.max_length, params.calibration_batch_size)
    ]
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    steps = []
    with tempfile.TemporaryDirectory(dir=ctx.out.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # ORT's symbolic shape inference cannot finish on Optimum's BERT export (dynamic axes);
        # onnx shape inference types every MatMul input, which is all QDQ insertion needs.
        quant_pre_process(str(src.file()), str(prepared), skip_symbolic_shape=True)
        steps.append("prepare: quant_pre_process (onnx shape inference + ORT basic optimisation)")
        with Progress(len(feeds), "calibrate", unit="batch") as progress:
            quantize_static(
                str(prepared),
                str(ctx.out / "model.onnx"),
                CalibrationReader(feeds, progress),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(params.op_types) or None,
                per_channel=params.per_channel,
                reduce_range=params.reduce_range,
                activation_type=types[params.activation_type],
                weight_type=types[params.weight_type],
                calibrate_method=getattr(CalibrationMethod, _METHODS[params.calibration_method]),
                calibration_providers=["CPUExecutionProvider"],
                extra_options={"ActivationSymmetric": True} if params.symmetric_activations else None,
            )
    steps.append(
        f"calibrate: {params.calibration_method} over {len(calibration)} calibration examples in {len(feeds)} batches"
    )
    model_path = ctx.out / "model.onnx"
    save_model(onnx.load(str(model_path)), model_path)
    steps.append(
        f"convert: QDQ, activations {params.activation_type}, weights {params.weight_type} "
        f"{'per channel' if params.per_channel else 'per tensor'}, ops {','.join(params.op_types) or 'all'}"
        f"{', symmetric activations' if params.symmetric_activations else ''}"
    )
    link_tree(src.path / (src.manifest.tokenizer or "tokenizer"), ctx.out / "tokenizer")
    check = validation_check(ctx, model_path, tokenizer, params.check_examples)
    steps.append(
        f"check: top-1 agreement {check['check_top1_agreement']:.3f} on {check['check_examples']} test examples"
    )
    extra = {"quantizer": "onnxruntime.quantization.quantize_static"}
    return onnx_manifest(
        ctx, params, model_path, precision="int8", device="cpu", steps=steps, metrics=check, extra=extra
    )
