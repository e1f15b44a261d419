"""What a backend can do, declared by the backend when it registers and copied into every result it writes.

Stages ask these, never a backend's name: the planner, the run job's scenarios, the summary and the
report all decide from a capability (the summary and the report read it from the result, so they never
import a runner).
"""

from __future__ import annotations

from enum import StrEnum


class Capability(StrEnum):
    SCORES_QUALITY = "scores-quality"
    """Its outputs are the model's own logits: guarded against the reference, scored and judged."""

    FP32_BASELINE = "fp32-baseline"
    """Runs the FP32 reference eagerly: headline speed-ups and typo-robustness references are against it."""

    MEASURES_OVERHEAD = "measures-overhead"
    """Does no model work: its latency is the harness's own, measured on the reference only."""

    GENERATES = "generates"
    """Steps a causal LM (greedy decoding with and without a KV cache): generation cells can run on it."""


Capabilities = frozenset[Capability]
