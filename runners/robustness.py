"""Robustness under typos, measured inside a run job: quality at each typo rate on the same perturbed texts.

Every variant sees the same texts (`quantmatrix.typos`, seeded). Agreement is with the FP32 reference
on those same texts: its logits are computed once per (reference, texts) with the FP32-baseline
backend (`Capability.FP32_BASELINE`) and cached under `artifacts/.robustness/<reference key>/`, so
other jobs reuse them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from quantmatrix.metrics import quality
from quantmatrix.records import FlippedExample, Manifest, Robustness, RobustnessLevel
from quantmatrix.store import digest
from quantmatrix.typos import METHOD, Perturbed, perturb

Logits = Callable[[Sequence[str]], np.ndarray]
MAX_FLIPPED = 10


def _cache_file(artifacts: Path, ref_key: str, texts: Sequence[str]) -> Path:
    return artifacts / ".robustness" / ref_key / f"{digest([METHOD, list(texts)])[:24]}.npy"


def reference_logits(artifacts: Path, ref_key: str, texts: Sequence[str], compute: Callable[[], Logits]) -> np.ndarray:
    """The reference's logits on `texts`, from the cache or computed (and cached) with `compute()`."""
    path = _cache_file(artifacts, ref_key, texts)
    if path.is_file():
        cached = np.load(path, allow_pickle=False)
        if cached.shape[0] == len(texts):
            return cached
    logits = np.asarray(compute()(texts), dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, logits, allow_pickle=False)
    tmp.replace(path)
    return logits


def eager_reference(artifacts: Path, reference: Manifest, threads: int, max_length: int) -> Logits:
    """A logits function over the FP32 reference loaded by the FP32-baseline backend (what the scores use)."""
    from transformers import AutoTokenizer

    from runners import LoadRequest, fp32_baseline
    from runners.measure import predict_all

    info = fp32_baseline()
    path = artifacts / reference.key
    session = info.load(LoadRequest(path=path, manifest=reference, device="cpu", threads=threads, params=info.params()))
    tokenizer = AutoTokenizer.from_pretrained(str(path / (reference.tokenizer or "tokenizer")))
    names = list(session.input_names)
    return lambda texts: predict_all(session.predict, tokenizer, texts, names, max_length)


def measure(
    logits_of: Logits,
    texts: Sequence[str],
    y: Sequence[int],
    labels: Sequence[str],
    clean: np.ndarray,
    levels: Sequence[float],
    seed: int,
    reference_of: Callable[[Perturbed], np.ndarray | None],
) -> Robustness:
    """Accuracy, macro-F1, agreement with FP32 and flips vs the clean text, at every typo rate."""
    clean_top = clean.argmax(-1)
    out = []
    for rate in levels:
        p = perturb(texts, rate, seed)
        logits = clean if rate == 0 else logits_of(p.texts)
        top = logits.argmax(-1)
        ref = reference_of(p)
        ref_top = ref.argmax(-1) if ref is not None else None
        q = quality(y, top, labels)
        q_ref = quality(y, ref_top, labels) if ref_top is not None else None
        flipped = np.flatnonzero(top != clean_top)
        out.append(
            RobustnessLevel(
                rate=rate,
                examples=len(texts),
                words=p.words,
                words_changed=p.changed,
                accuracy=q.accuracy,
                macro_f1=q.macro_f1,
                agreement=float((top == ref_top).mean()) if ref_top is not None else None,
                reference_accuracy=q_ref.accuracy if q_ref else None,
                reference_macro_f1=q_ref.macro_f1 if q_ref else None,
                flips=int(flipped.size),
                flipped=[
                    FlippedExample(
                        text=texts[i],
                        perturbed=p.texts[i],
                        label=labels[int(y[i])],
                        clean_top=labels[int(clean_top[i])],
                        perturbed_top=labels[int(top[i])],
                        reference_top=labels[int(ref_top[i])] if ref_top is not None else None,
                    )
                    for i in flipped[:MAX_FLIPPED]
                ],
            )
        )
    return Robustness(method=METHOD, seed=seed, levels=out)
