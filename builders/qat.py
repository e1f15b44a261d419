"""Quantisation-aware fine-tuning (torchao QATConfig), then ONNX export and ONNX Runtime INT8 like the PTQ path.

Steps: load the FP32 reference -> prepare: torchao QATConfig fake-quantises every Linear (int8
weights per channel, int8 activations per token) -> train on the train split with fake quant in
the loop -> convert: QATConfig(step="convert") drops the fake-quant wrappers, leaving weights
that have adapted to INT8 rounding -> save safetensors -> export ONNX (Optimum) -> quantize_dynamic
INT8 -> check against the reference.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builders import BuildContext, builder, link_tree
from builders._onnx import export_onnx, load_tokenizer, onnx_manifest, ort_logits
from builders._ort_dynamic import quantize_dynamic_int8
from builders._qat import FineTuneParams, check_int8, qat_fine_tune, validation_macro_f1
from builders._training import seed_all, torch_reference, train_split
from quantmatrix.records import Manifest
from quantmatrix.sensitivity import QuantSettings


@dataclass(frozen=True)
class QatParams(FineTuneParams):
    per_channel: bool = True  # the final ONNX Runtime weights, matching the per-channel fake quant
    opset: int = 18
    check_examples: int = 128


def _validation_f1(model: object, tokenizer: object, ctx: BuildContext) -> float:
    from builders.reference import predict_logits

    return validation_macro_f1(ctx, lambda texts: predict_logits(model, tokenizer, texts, ctx.model.max_length))


@builder("qat", params=QatParams, output_format="onnx")
def build(ctx: BuildContext, params: QatParams) -> Manifest:
    import torch
    from torchao.quantization import quantize_
    from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig
    from transformers import AutoModelForSequenceClassification

    ref = torch_reference(ctx, "qat")
    seed_all(params.seed)
    tokenizer = load_tokenizer(ref.path / (ref.manifest.tokenizer or "tokenizer"))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(ref.path / (ref.manifest.entry or "model")), local_files_only=True
    )
    f1_before = _validation_f1(model, tokenizer, ctx)
    steps = [f"load: FP32 reference (validation macro-F1 {f1_before:.4f})"]

    # ONNX Runtime's dynamic INT8 quantises activations per tensor (uint8, asymmetric); torchao's
    # Intx fake quantiser has no per-tensor granularity, so per-token asymmetric int8 is the closest.
    activation = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
    weight = IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True)
    quantize_(model, QATConfig(activation_config=activation, weight_config=weight, step="prepare"))
    steps.append("prepare: torchao QATConfig, int8 per-token activations + int8 per-channel weights (fake quant)")

    train = train_split(ctx.data, params.max_train_examples)
    enc = tokenizer([e.text for e in train], truncation=True, max_length=ctx.model.max_length)
    y = torch.tensor([e.label for e in train])

    def loss_of(idx: list[int]) -> Any:
        batch = tokenizer.pad({k: [enc[k][i] for i in idx] for k in enc}, return_tensors="pt")
        return model(**batch, labels=y[idx]).loss

    model.train()
    run = qat_fine_tune(ctx, params, model.parameters(), loss_of, len(train), "QAT")
    steps.append(run.step_line())

    quantize_(model, QATConfig(step="convert"))
    model.eval()
    f1_after = _validation_f1(model, tokenizer, ctx)
    steps.append(f"convert: QATConfig(step='convert') removes fake quant (FP32 validation macro-F1 {f1_after:.4f})")

    with tempfile.TemporaryDirectory(dir=ctx.out.parent) as tmp:
        trained = Path(tmp) / "trained"
        model.save_pretrained(trained, safe_serialization=True)
        fp32_onnx = Path(tmp) / "fp32.onnx"
        export_onnx(trained, fp32_onnx, params.opset)
        steps.append(f"export: optimum main_export opset={params.opset}")
        quantize_dynamic_int8(fp32_onnx, ctx.out / "model.onnx", QuantSettings(per_channel=params.per_channel))
    model_path = ctx.out / "model.onnx"
    steps.append(
        f"quantize: ONNX Runtime dynamic INT8, weights {'per channel' if params.per_channel else 'per tensor'}"
    )
    link_tree(ref.path / (ref.manifest.tokenizer or "tokenizer"), ctx.out / "tokenizer")
    int8 = check_int8(
        ctx, lambda texts: ort_logits(model_path, tokenizer, texts, ctx.model.max_length), params.check_examples
    )
    steps.append(int8.step_line())
    metrics = int8.reference | {
        **run.metrics(),
        "validation_macro_f1_before": round(f1_before, 4),
        "validation_macro_f1_after_qat": round(f1_after, 4),
        "validation_macro_f1_int8": round(int8.macro_f1, 4),
    }
    note = (
        "fake quant trained int8 per-token activations; ONNX Runtime dynamic INT8 quantises them per tensor "
        "(torchao's Intx fake quantiser has no per-tensor granularity)"
    )
    return onnx_manifest(
        ctx, params, model_path, precision="int8", device="cpu", steps=steps, metrics=metrics,
        extra={"qat": "torchao QATConfig"}, notes=[note],
    )  # fmt: skip
