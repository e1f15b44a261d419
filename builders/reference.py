"""The FP32 reference: LoRA fine-tune (query/value) of the pretrained encoder, merged and saved.

Steps: load pretrained -> wrap with LoRA (peft) -> train on the train split -> merge adapter ->
save safetensors + tokenizer -> score validation and test. Deterministic for a fixed seed.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from builders import BuildContext, builder
from builders._training import seed_all, shuffled_batches, train_split
from quantmatrix.errors import QuantmatrixError
from quantmatrix.metrics import quality
from quantmatrix.progress import Progress
from quantmatrix.records import EncoderArch, HfLoad, Manifest, TensorSpec


@dataclass(frozen=True)
class ReferenceParams:
    """The reference takes its knobs from the model's `finetune` table; nothing here."""


def predict_logits(model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    import torch

    out = []
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(
                texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            out.append(model(**enc).logits.float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


@builder("reference", params=ReferenceParams, output_format="torch")
def build(ctx: BuildContext, params: ReferenceParams) -> Manifest:
    import torch

    from quantmatrix.hf import load_classifier, load_tokenizer

    if ctx.model.task != "text-classification":
        raise QuantmatrixError(f"model {ctx.model.name}: the reference builder handles text-classification only")
    ft = ctx.model.finetune
    data = ctx.data
    labels = data.labels
    seed_all(ft.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    base_dir = ctx.matrix.path.parent

    steps = []
    tokenizer = load_tokenizer(ctx.model.source, base_dir)
    model = load_classifier(ctx.model.source, labels, ft.seed, base_dir)
    random_init = ctx.model.source.startswith("random:")
    steps.append(f"load {ctx.model.source}{' (random init)' if random_init else ''}")

    train = train_split(data, ft.max_train_examples)
    if ft.method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        lora = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=ft.lora_r,
            lora_alpha=ft.lora_alpha,
            lora_dropout=ft.lora_dropout,
            target_modules=list(ft.target_modules),
        )
        model = get_peft_model(model, lora)
        steps.append(
            f"prepare: LoRA r={ft.lora_r} alpha={ft.lora_alpha} on {','.join(ft.target_modules)} (+ classifier head)"
        )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    # Tokenise once; batches are padded dynamically to their longest member.
    enc = tokenizer([e.text for e in train], truncation=True, max_length=ctx.model.max_length)
    y = torch.tensor([e.label for e in train])
    rng = random.Random(ft.seed)
    epochs_int = math.ceil(ft.epochs)
    batches_per_epoch = math.ceil(len(train) / ft.batch_size)
    total_steps = max(1, int(ft.epochs * batches_per_epoch))
    optim = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=ft.learning_rate, weight_decay=0.01
    )
    warmup = max(1, total_steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: min((s + 1) / warmup, max(0.0, (total_steps - s) / max(1, total_steps - warmup)))
    )
    model.train()
    t0 = time.perf_counter()
    step = 0
    losses: list[float] = []
    with Progress(total_steps, "fine-tune", unit="step") as progress:
        for epoch in range(epochs_int):
            for idx in shuffled_batches(len(train), ft.batch_size, rng):
                if step >= total_steps:
                    break
                batch = tokenizer.pad({k: [enc[k][i] for i in idx] for k in enc}, return_tensors="pt")
                out = model(**batch, labels=y[idx])
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optim.step()
                sched.step()
                optim.zero_grad(set_to_none=True)
                losses.append(out.loss.item())
                step += 1
                progress.update(step, note=f"epoch {epoch + 1}/{epochs_int}")
            ctx.log(
                f"  epoch {epoch + 1}/{epochs_int}: mean loss {np.mean(losses[-batches_per_epoch:]):.4f} "
                f"({time.perf_counter() - t0:.0f}s)"
            )
    train_seconds = time.perf_counter() - t0
    steps.append(
        f"train: {step} steps, batch {ft.batch_size}, lr {ft.learning_rate}, {train_seconds:.1f}s, "
        f"{trainable}/{total} parameters trainable"
    )

    if ft.method == "lora":
        model = model.merge_and_unload()
        steps.append("convert: merge LoRA adapter into the base weights")
    model.eval()
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {v: k for k, v in enumerate(labels)}
    model.save_pretrained(ctx.out / "model", safe_serialization=True)
    tokenizer.save_pretrained(ctx.out / "tokenizer")
    steps.append("save: model/model.safetensors + tokenizer/")

    metrics: dict[str, float] = {"train_seconds": round(train_seconds, 2), "final_loss": float(np.mean(losses[-20:]))}
    (ctx.out / "eval").mkdir()
    for split in ("validation", "test"):
        examples = data.split(split)
        logits = predict_logits(model, tokenizer, [e.text for e in examples], ctx.model.max_length)
        q = quality([e.label for e in examples], logits.argmax(-1), labels)
        metrics[f"{split}_accuracy"] = round(q.accuracy, 4)
        metrics[f"{split}_macro_f1"] = round(q.macro_f1, 4)
        if split == "test":  # every run job compares its variant with these reference logits
            np.save(ctx.out / "eval" / "test_logits.npy", logits.astype(np.float32), allow_pickle=False)
    canary = predict_logits(model, tokenizer, [c.text for c in data.canary], ctx.model.max_length)
    np.save(
        ctx.out / "eval" / "canary_logits.npy", canary.astype(np.float32).reshape(-1, len(labels)), allow_pickle=False
    )
    steps.append("score: validation/test metrics; test and canary logits saved to eval/")
    ctx.log(f"  validation macro-F1 {metrics['validation_macro_f1']:.4f}, test macro-F1 {metrics['test_macro_f1']:.4f}")

    dyn = ["batch", "sequence"]
    io_in = [TensorSpec(name=n, dtype="int64", shape=list(dyn)) for n in tokenizer.model_input_names]
    return ctx.manifest(
        format="torch",
        precision="fp32",
        task="text-classification",
        id2label={str(i): name for i, name in enumerate(labels)},
        tokenizer="tokenizer",
        entry="model",
        io_inputs=io_in,
        io_outputs=[TensorSpec(name="logits", dtype="float32", shape=["batch", len(labels)])],
        device="any",
        steps=steps,
        metrics=metrics,
        random_init=random_init,
        load=HfLoad(),
        arch=EncoderArch(
            **{
                k: int(getattr(model.config, k))
                for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_labels")
            }
        ),
        extra={
            "dataset": data.name,
            "dataset_fingerprint": data.fingerprint,
            "parameters": total,
            "trainable_parameters": trainable,
            "finetune": vars(ft),
        },
    )
