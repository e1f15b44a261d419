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
from builders._onnx import (
    export_onnx,
    load_tokenizer,
    onnx_manifest,
    ort_logits,
    save_model,
    validation_check,
)
from builders._training import fine_tune, seed_all, torch_reference, train_split
from quantmatrix.metrics import quality
from quantmatrix.records import Manifest


@dataclass(frozen=True)
class QatParams:
    epochs: float = 1.0
    learning_rate: float = 2e-5
    batch_size: int = 32
    max_train_examples: int = 1000  # 0: the whole train split
    seed: int = 1234
    per_channel: bool = True  # the final ONNX Runtime weights, matching the per-channel fake quant
    opset: int = 18
    check_examples: int = 128


def _validation_f1(model: object, tokenizer: object, ctx: BuildContext) -> float:
    from builders.reference import predict_logits

    examples = ctx.data.split("validation")
    logits = predict_logits(model, tokenizer, [e.text for e in examples], ctx.model.max_length)
    return quality([e.label for e in examples], logits.argmax(-1), ctx.data.labels).macro_f1


@builder("qat", params=QatParams, output_format="onnx")
def build(ctx: BuildContext, params: QatParams) -> Manifest:
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
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
    run = fine_tune(
        model.parameters(), loss_of, len(train),
        epochs=params.epochs, batch_size=params.batch_size, learning_rate=params.learning_rate, seed=params.seed,
        what="QAT fine-tune",
    )  # fmt: skip
    ctx.log(f"  QAT: {run.steps} steps in {run.seconds:.0f}s, final loss {run.final_loss:.4f}")
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
        quantize_dynamic(
            str(fp32_onnx),
            str(ctx.out / "model.onnx"),
            per_channel=params.per_channel,
            weight_type=QuantType.QInt8,
        )
    model_path = ctx.out / "model.onnx"
    import onnx

    save_model(onnx.load(str(model_path)), model_path)
    steps.append(
        f"quantize: ONNX Runtime dynamic INT8, weights {'per channel' if params.per_channel else 'per tensor'}"
    )
    link_tree(ref.path / (ref.manifest.tokenizer or "tokenizer"), ctx.out / "tokenizer")
    check = validation_check(ctx, model_path, tokenizer, params.check_examples)
    validation = ctx.data.split("validation")
    int8_logits = ort_logits(model_path, tokenizer, [e.text for e in validation], ctx.model.max_length)
    f1_int8 = quality([e.label for e in validation], int8_logits.argmax(-1), ctx.data.labels).macro_f1
    steps.append(
        f"check: top-1 agreement {check['check_top1_agreement']:.3f} on {check['check_examples']} test examples, "
        f"INT8 validation macro-F1 {f1_int8:.4f}"
    )
    metrics = check | {
        **run.metrics(),
        "validation_macro_f1_before": round(f1_before, 4),
        "validation_macro_f1_after_qat": round(f1_after, 4),
        "validation_macro_f1_int8": round(f1_int8, 4),
    }
    note = (
        "fake quant trained int8 per-token activations; ONNX Runtime dynamic INT8 quantises them per tensor "
        "(torchao's Intx fake quantiser has no per-tensor granularity)"
    )
    return onnx_manifest(
        ctx, params, model_path, precision="int8", device="cpu", steps=steps, metrics=metrics,
        extra={"qat": "torchao QATConfig"}, notes=[note],
    )  # fmt: skip
