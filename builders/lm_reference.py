"""The FP32 reference of a causal LM: real weights where they load, else a seeded random init (labelled).

Steps: load (source, else the fallback) -> save safetensors + tokenizer -> fixed prompts from the
dataset's test split -> greedy tokens with and without the KV cache (must be equal) -> teacher-forced
next-token logits along those tokens, saved to eval/ for every variant's agreement and KL.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from builders import BuildContext, builder
from quantmatrix.causal_lm import TorchLM, fixed_prompts, greedy, load_causal_lm, teacher_forced
from quantmatrix.errors import QuantmatrixError
from quantmatrix.progress import Progress
from quantmatrix.records import DecoderArch, HfLoad, Manifest, TensorSpec


@dataclass(frozen=True)
class LmReferenceParams:
    """The reference takes its knobs from the model's table (source, fallback, generation); nothing here."""


@builder("lm-reference", params=LmReferenceParams, output_format="torch")
def build(ctx: BuildContext, params: LmReferenceParams) -> Manifest:
    import torch

    if ctx.model.task != "text-generation":
        raise QuantmatrixError(f"model {ctx.model.name}: lm-reference builds text-generation models only")
    torch.use_deterministic_algorithms(True, warn_only=True)
    seed = ctx.model.finetune.seed
    loaded = load_causal_lm(ctx.model.source, ctx.model.fallback, seed, ctx.matrix.path.parent)
    model, tokenizer = loaded.model, loaded.tokenizer
    steps = [f"load {loaded.source}{' (seeded random init, seed ' + str(seed) + ')' if loaded.random_init else ''}"]
    model.save_pretrained(ctx.out / "model", safe_serialization=True)
    tokenizer.save_pretrained(ctx.out / "tokenizer")
    steps.append("save: model/model.safetensors + tokenizer/")

    gen = ctx.model.generation
    texts = [e.text for e in ctx.data.split("test")]
    prompts = fixed_prompts(tokenizer, texts, gen.prompts, gen.prompt_tokens)
    stepper = TorchLM(model)
    with Progress(3, "reference generation", unit="pass") as progress:
        progress.update(0, note="greedy with KV cache")
        cached, _ = greedy(stepper, prompts, gen.new_tokens, use_cache=True)
        progress.update(1, note="greedy without KV cache")
        uncached, _ = greedy(stepper, prompts, gen.new_tokens, use_cache=False)
        if not np.array_equal(cached, uncached):
            raise QuantmatrixError(
                f"FP32 greedy tokens with the KV cache differ from those without it at "
                f"{int((cached != uncached).sum())} of {cached.size} positions"
            )
        progress.update(2, note="teacher-forced logits")
        logits = teacher_forced(stepper, prompts, cached)
    (ctx.out / "eval").mkdir()
    np.save(ctx.out / "eval" / "generation_prompts.npy", prompts, allow_pickle=False)
    np.save(ctx.out / "eval" / "generation_tokens.npy", cached, allow_pickle=False)
    np.save(ctx.out / "eval" / "generation_logits.npy", logits.astype(np.float32), allow_pickle=False)
    steps.append(
        f"reference: {gen.prompts} prompts x {gen.prompt_tokens} tokens, {gen.new_tokens} greedy tokens each; "
        "with-cache tokens equal no-cache tokens; teacher-forced next-token logits saved to eval/"
    )
    cfg = model.config
    vocab = int(cfg.vocab_size)
    dyn = ["batch", "sequence"]
    manifest = ctx.manifest(
        format="torch",
        precision="fp32",
        task="text-generation",
        tokenizer="tokenizer",
        entry="model",
        io_inputs=[TensorSpec(name=n, dtype="int64", shape=list(dyn)) for n in ("input_ids", "attention_mask")],
        io_outputs=[TensorSpec(name="logits", dtype="float32", shape=["batch", "sequence", vocab])],
        device="any",
        steps=steps,
        notes=loaded.notes,
        metrics={"cache_equal": 1.0},
        random_init=loaded.random_init,
        load=HfLoad(),
        arch=DecoderArch(
            n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_head=cfg.n_head, n_positions=cfg.n_positions, vocab_size=vocab
        ),
        tokenizer_origin=loaded.tokenizer_label,
        extra={
            "source_used": loaded.source,
            "dataset": ctx.data.name,
            "dataset_fingerprint": ctx.data.fingerprint,
            "parameters": sum(p.numel() for p in model.parameters()),
            "generation": vars(gen),
        },
    )
    manifest.builder = "lm-reference"  # the build framework names every implicit reference 'reference'
    return manifest
