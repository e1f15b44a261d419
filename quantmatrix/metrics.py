"""Quality and agreement metrics computed from saved logits (numpy only, model-agnostic)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from quantmatrix.records import Agreement, ClassMetrics, Quality, WorstExample


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int) -> np.ndarray:
    cm = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def quality(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, labels: Sequence[str]) -> Quality:
    """Accuracy, macro-F1 over all labels (absent classes count as F1 0 only if predicted), P/R/F1."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    cm = confusion_matrix(t, p, len(labels))
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = (support > 0) | (predicted > 0)
    macro = float(f1[present].mean()) if present.any() else 0.0
    return Quality(
        examples=int(t.size),
        accuracy=float((t == p).mean()) if t.size else 0.0,
        macro_f1=macro,
        per_class={
            name: ClassMetrics(
                precision=float(precision[i]), recall=float(recall[i]), f1=float(f1[i]), support=int(support[i])
            )
            for i, name in enumerate(labels)
        },
        confusion=cm.tolist(),
    )


def agreement(
    reference: np.ndarray,
    variant: np.ndarray,
    texts: Sequence[str],
    y_true: Sequence[int],
    labels: Sequence[str],
    worst: int = 10,
) -> Agreement:
    """Top-1 agreement, mean KL(reference || variant) of softmax, max |Δlogit|, and the worst examples."""
    if reference.shape != variant.shape:
        raise ValueError(f"logit shapes differ: reference {reference.shape}, variant {variant.shape}")
    lp_ref, lp_var = log_softmax(reference), log_softmax(variant)
    kl = (np.exp(lp_ref) * (lp_ref - lp_var)).sum(axis=-1)
    dlogit = np.abs(reference.astype(np.float64) - variant.astype(np.float64)).max(axis=-1)
    top_ref, top_var = reference.argmax(-1), variant.argmax(-1)
    order = np.lexsort((-kl, top_ref == top_var))  # flips first, then by KL
    worst_rows = [
        WorstExample(
            text=texts[i],
            label=labels[int(y_true[i])],
            reference_top=labels[int(top_ref[i])],
            variant_top=labels[int(top_var[i])],
            kl=float(kl[i]),
            max_abs_dlogit=float(dlogit[i]),
            reference_top5=top_k(reference[i], labels),
            variant_top5=top_k(variant[i], labels),
        )
        for i in order[:worst]
    ]
    return Agreement(
        examples=int(reference.shape[0]),
        top1=float((top_ref == top_var).mean()) if reference.shape[0] else 0.0,
        mean_kl=float(kl.mean()) if kl.size else 0.0,
        max_abs_dlogit=float(dlogit.max()) if dlogit.size else 0.0,
        flips=int((top_ref != top_var).sum()),
        worst=worst_rows,
        predictions=[int(c) for c in top_var],
    )


def top_k(logits: np.ndarray, labels: Sequence[str], k: int = 5) -> list[tuple[str, float]]:
    probs = softmax(logits[None, :])[0]
    idx = np.argsort(-probs)[:k]
    return [(labels[int(i)], float(probs[i])) for i in idx]


def percentile_summary(samples_ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(samples_ms, dtype=np.float64)
    return {
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
        "stdev": float(a.std(ddof=1)) if a.size > 1 else 0.0,
        "min": float(a.min()),
        "max": float(a.max()),
    }
