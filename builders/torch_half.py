"""The reference cast to FP16 or BF16 (PyTorch), saved as half-size safetensors, for the CUDA runners.

Steps: load the FP32 reference -> convert: cast every floating-point weight to `dtype` -> check
the half-precision logits against the reference on the check examples (on this machine's CPU,
which has FP16/BF16 kernels for every BERT op) -> save: safetensors in `dtype` + tokenizer.
The torch runner loads the weights in the manifest's precision (never silently upcast).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from builders import BuildContext, builder, link_tree
from quantmatrix.errors import QuantmatrixError
from quantmatrix.records import HfLoad, Manifest

PRECISION = {"float16": "fp16", "bfloat16": "bf16"}


@dataclass(frozen=True)
class TorchHalfParams:
    dtype: Literal["float16", "bfloat16"] = "float16"
    check_examples: int = 128


@builder("torch-half", params=TorchHalfParams, output_format="torch", device="cuda")
def build(ctx: BuildContext, params: TorchHalfParams) -> Manifest:
    import torch
    from transformers import AutoModelForSequenceClassification

    from builders._onnx import load_tokenizer, reference_check
    from builders.reference import predict_logits

    ref = ctx.reference
    if ref.manifest.format != "torch":
        raise QuantmatrixError(f"torch-half casts a torch reference, got format {ref.manifest.format!r}")
    dtype = getattr(torch, params.dtype)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(ref.path / (ref.manifest.entry or "model")), local_files_only=True
    ).eval()
    model = model.to(dtype)
    kinds = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    steps = [f"convert: every parameter cast to {params.dtype} (parameters now {', '.join(kinds)})"]

    link_tree(ref.path / (ref.manifest.tokenizer or "tokenizer"), ctx.out / "tokenizer")
    tokenizer = load_tokenizer(ctx.out / "tokenizer")
    check = reference_check(
        ctx, lambda texts: predict_logits(model, tokenizer, texts, ctx.model.max_length), params.check_examples
    )
    steps.append(
        f"check: {params.dtype} on CPU vs reference on {check['check_examples']} test examples, top-1 agreement "
        f"{check['check_top1_agreement']:.3f}, max |Δlogit| {check['check_max_abs_logit_diff']:.2e}"
    )
    model.save_pretrained(ctx.out / "model")  # safetensors: the default in transformers 4.x and the only format in 5.x
    steps.append(f"save: model/model.safetensors in {params.dtype}")
    return ctx.manifest(
        format="torch",
        precision=PRECISION[params.dtype],
        params=params,
        entry="model",
        tokenizer="tokenizer",
        io_inputs=ref.manifest.io_inputs,
        io_outputs=ref.manifest.io_outputs,
        id2label=ref.manifest.id2label,
        random_init=ref.manifest.random_init,
        device="cuda",
        steps=steps,
        metrics=check,
        load=HfLoad(),
        extra={"torch_dtype": params.dtype},
    )
