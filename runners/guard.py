"""The guard that runs before any timing: it makes mislabelled or mis-wired artefacts impossible to publish.

Checks: inputs bound by name, output shape [batch, num_labels], label map equal to the reference's,
and agreement with the FP32 reference on canary prompts and a sample of the test split. The seeds'
TensorRT "everything is Business" engine fails the last two.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from quantmatrix.records import Manifest

MIN_CANARY_AGREEMENT = 0.5
MIN_SAMPLE_AGREEMENT = 0.5


class GuardFailure(Exception):
    """The artefact must not be timed; the message says why in one line."""


def check_inputs(session_inputs: Sequence[str], manifest: Manifest, tokenizer_inputs: Sequence[str]) -> None:
    declared = [t.name for t in manifest.io_inputs]
    if declared and sorted(session_inputs) != sorted(declared):
        raise GuardFailure(f"input names {sorted(session_inputs)} differ from the manifest's {sorted(declared)}")
    missing = [n for n in session_inputs if n not in tokenizer_inputs]
    if missing:
        raise GuardFailure(f"inputs {missing} are not produced by the tokenizer ({list(tokenizer_inputs)})")


def check_labels(manifest: Manifest, reference: Manifest) -> None:
    if manifest.id2label != reference.id2label:
        diff = [k for k in reference.id2label if manifest.id2label.get(k) != reference.id2label[k]]
        raise GuardFailure(
            f"id2label differs from the reference at ids {diff[:5]} "
            f"(e.g. {diff[0] if diff else '?'}: {manifest.id2label.get(diff[0]) if diff else None!r} "
            f"vs {reference.id2label.get(diff[0]) if diff else None!r})"
        )


def check_output(logits: np.ndarray, batch: int, num_labels: int) -> None:
    if logits.ndim != 2 or logits.shape != (batch, num_labels):
        raise GuardFailure(f"output shape {list(logits.shape)}, expected [batch={batch}, num_labels={num_labels}]")
    if not np.isfinite(logits).all():
        raise GuardFailure("output contains NaN or inf")


def check_agreement(
    name: str, variant: np.ndarray, reference: np.ndarray, minimum: float, labels: Mapping[str, str]
) -> float:
    top_v, top_r = variant.argmax(-1), reference.argmax(-1)
    agree = float((top_v == top_r).mean())
    if agree < minimum:
        counts = np.bincount(top_v, minlength=len(labels))
        dominant = int(counts.argmax())
        share = counts[dominant] / max(1, len(top_v))
        hint = f"; {share:.0%} predicted {labels.get(str(dominant), dominant)!r}" if share >= 0.5 else ""
        raise GuardFailure(f"{name} top-1 agreement with the FP32 reference is {agree:.0%} (< {minimum:.0%}){hint}")
    return agree
