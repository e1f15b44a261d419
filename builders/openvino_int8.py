"""NNCF post-training INT8 quantisation of an OpenVINO IR, calibrated on the dataset's calibration split.

Steps: prepare (read the FP32 IR; one tokenised calibration example per NNCF dataset item, natural
length) -> calibrate and convert (nncf.quantize, model_type TRANSFORMER: FakeQuantize on MatMul
inputs, activation statistics from `subset_size` items, optional fast bias correction, ignored scopes
kept FP32) -> save the IR -> check against the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from builders import BuildContext, builder, link_tree
from builders._onnx import encode, load_tokenizer, reference_check
from builders._openvino import ir_logits, ir_manifest, op_counts
from quantmatrix.errors import QuantmatrixError
from quantmatrix.openvino_model import IR_FILE, clean_error, read_model, save_ir
from quantmatrix.records import Manifest


@dataclass(frozen=True)
class OpenVinoInt8Params:
    # mixed: symmetric weights, asymmetric activations (NNCF's choice for transformers);
    # performance: both symmetric.
    preset: Literal["mixed", "performance"] = "mixed"
    subset_size: int = 300  # calibration examples NNCF collects activation statistics over
    fast_bias_correction: bool = True
    # Regular expressions over IR node names that stay FP32, anchored at the name's start (NNCF uses
    # re.match): ".*/encoder/layer[.]5/" keeps the last MiniLM block FP32. One that matches nothing fails.
    ignored_scopes: tuple[str, ...] = ()
    check_examples: int = 128


@builder("openvino-int8", params=OpenVinoInt8Params, output_format="openvino")
def build(ctx: BuildContext, params: OpenVinoInt8Params) -> Manifest:
    import nncf

    src = ctx.source
    src.require("openvino-int8 quantises an OpenVINO IR", format="openvino")
    if params.subset_size < 1:
        raise QuantmatrixError(f"openvino-int8: subset_size must be at least 1, got {params.subset_size}")
    model = read_model(src.file())
    tokenizer = load_tokenizer(src.path / (src.manifest.tokenizer or "tokenizer"))
    calibration = [e.text for e in ctx.data.split("calibration")[: params.subset_size]]
    if not calibration:
        raise QuantmatrixError(f"dataset {ctx.data.name} has an empty calibration split")
    names = {p.get_any_name() for p in model.inputs}
    items = [
        {k: v for k, v in encode(tokenizer, [text], ctx.model.max_length, padding=False).items() if k in names}
        for text in calibration
    ]
    steps = [f"prepare: {len(items)} calibration examples, one per item at natural length (max {ctx.model.max_length})"]
    scope = nncf.IgnoredScope(patterns=list(params.ignored_scopes)) if params.ignored_scopes else None
    preset = nncf.QuantizationPreset.MIXED if params.preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE
    try:
        quantized = nncf.quantize(
            model,
            nncf.Dataset(items),
            preset=preset,
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(items),
            fast_bias_correction=params.fast_bias_correction,
            ignored_scope=scope,
        )
    except Exception as e:  # nncf raises its own ValidationError (e.g. an ignored scope matching nothing)
        raise QuantmatrixError(f"nncf.quantize failed on {src.file().name}: {clean_error(e)}") from None
    counts = op_counts(quantized)
    steps.append(
        f"calibrate+convert: nncf.quantize preset={params.preset} model_type=TRANSFORMER over {len(items)} examples, "
        f"{'fast ' if params.fast_bias_correction else ''}bias correction, "
        f"ignored scopes {list(params.ignored_scopes) or 'none'}: {counts.get('FakeQuantize', 0)} FakeQuantize nodes"
    )
    if not counts.get("FakeQuantize"):
        raise QuantmatrixError("nncf.quantize inserted no FakeQuantize node: nothing was quantised")
    xml = ctx.out / IR_FILE
    save_ir(quantized, xml)
    link_tree(src.path / (src.manifest.tokenizer or "tokenizer"), ctx.out / "tokenizer")
    check = reference_check(ctx, ir_logits(xml, tokenizer, ctx.model.max_length), params.check_examples)
    steps.append(
        f"check: top-1 agreement {check['check_top1_agreement']:.3f} on {check['check_examples']} test examples"
    )
    extra = {
        "quantizer": "nncf.quantize",
        "nncf": nncf.__version__,
        "nncf_params": {
            "preset": params.preset,
            "model_type": "transformer",
            "subset_size": len(items),
            "fast_bias_correction": params.fast_bias_correction,
            "ignored_scopes": list(params.ignored_scopes),
        },
    }
    return ir_manifest(ctx, params, precision="int8", device="cpu", steps=steps, metrics=check, extra=extra)
