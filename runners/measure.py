"""The measurement protocol, shared by every runner: timing loops, scoring from logits, verdicts.

Model-agnostic (like MLPerf LoadGen): it times any `predict` callable on prepared inputs and scores
saved logits; it knows nothing about backends.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from quantmatrix.hardware import memory_bandwidth_forked_gbs, speed_probe_per_cpu_ms
from quantmatrix.inputs import encode, natural_batches
from quantmatrix.machine_lock import LoadWindow, TimingLock
from quantmatrix.metrics import percentile_summary
from quantmatrix.records import Agreement, DecoderArch, EncoderArch, Latency, Quality
from quantmatrix.spec import MeasureSpec, Thresholds

Batch = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Inputs:
    """Tokenised batches of the test split for one (batch size, sequence mode) cell."""

    batch_size: int
    seq_mode: str
    batches: tuple[dict[str, np.ndarray], ...]

    @property
    def seq_len(self) -> int:
        """The mean sequence length over the timed batches (the padded length when padded)."""
        return round(float(np.mean([b["input_ids"].shape[1] for b in self.batches])))

    @property
    def tokens_per_call(self) -> float:
        return float(np.mean([b["input_ids"].size for b in self.batches]))


def tokenise(
    tokenizer: object,
    texts: Sequence[str],
    input_names: Sequence[str],
    batch_size: int,
    seq_mode: str,
    padded_length: int,
    max_batches: int | None = None,
) -> Inputs:
    """Fixed batches in test-split order: padded to `padded_length`, or to each batch's longest text."""
    batches = []
    limit = len(texts) if max_batches is None else min(len(texts), max_batches * batch_size)
    padding = "max_length" if seq_mode == "padded" else True
    for i in range(0, limit - batch_size + 1, batch_size):
        batches.append(encode(tokenizer, texts[i : i + batch_size], input_names, padded_length, padding=padding))
    if not batches:
        raise ValueError(f"need at least {batch_size} texts to form one batch, got {len(texts)}")
    return Inputs(batch_size=batch_size, seq_mode=seq_mode, batches=tuple(batches))


def time_predict(
    predict: Callable[[Batch], object],
    inputs: Inputs,
    spec: MeasureSpec,
    on_start: Callable[[], None] | None = None,
    lock: TimingLock | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> Latency:
    """Warm up, then time calls until both `min_iterations` and `min_seconds` are reached.

    `max_seconds` and `max_iterations` cap it (the null runner would otherwise keep millions of
    microsecond samples).

    Batches are cycled in a fixed order so every variant sees the same inputs. GC is paused in the
    timed loop so a collection does not land in one backend's samples and not another's.
    `on_start` is called just before the first timed call; `progress` after each timed call, outside
    its sample, with (iterations so far, seconds since the first).

    With `lock`, everything from the first probe to the last is done holding the machine-wide timing
    turn: the warm-up and the probes load the machine as hard as the loop, so inside the turn they
    never land in another process's timed loop. Other work's CPU use on the usable cores is measured
    over a window covering the loop (at least `MIN_WINDOW_S`) whatever its length.
    """
    turn = lock.turn() if lock is not None else contextlib.nullcontext(None)
    with turn as held:
        batches = inputs.batches
        probe_before = speed_probe_per_cpu_ms()
        bandwidth_before = memory_bandwidth_forked_gbs()
        for i in range(spec.warmup):
            predict(batches[i % len(batches)])
        samples: list[float] = []
        gc_was_enabled = gc.isenabled()
        gc.collect()
        gc.disable()
        if on_start is not None:
            on_start()
        window = LoadWindow()
        timed_from = time.time()
        try:
            start = time.perf_counter_ns()
            i = 0
            while True:
                batch = batches[i % len(batches)]
                t0 = time.perf_counter_ns()
                predict(batch)
                samples.append((time.perf_counter_ns() - t0) / 1e6)
                i += 1
                elapsed = (time.perf_counter_ns() - start) / 1e9
                if progress is not None:
                    progress(i, elapsed)
                enough = i >= spec.min_iterations and elapsed >= spec.min_seconds
                if enough or elapsed >= spec.max_seconds or i >= spec.max_iterations:
                    break
        finally:
            if gc_was_enabled:
                gc.enable()
        timed_until = time.time()
        load = window.stop()
        # Per CPU, the slower of before and after: the timed loop ran between them.
        probe = [max(a, b) for a, b in zip(probe_before, speed_probe_per_cpu_ms(), strict=True)]
        bandwidth = [b for b in (bandwidth_before, memory_bandwidth_forked_gbs()) if b is not None]
    s = percentile_summary(samples)
    return Latency(
        samples=[round(x, 5) for x in samples],
        iterations=len(samples),
        warmup=spec.warmup,
        background_cores=load.background_cores if load else None,
        probe_ms=max(probe),
        probe_cpus_ms=probe,
        bandwidth_gbs=bandwidth if len(bandwidth) == 2 else None,
        lock_wait_s=held.lock_wait_s if held else None,
        quiet_wait_s=held.quiet_wait_s if held else None,
        timed_from=timed_from,
        timed_until=timed_until,
        load_window_s=load.window_s if load else None,
        background_share=round(load.share, 3) if load else None,
        disturbed=load.disturbed if load else None,
        **s,
    )


def predict_all(
    predict: Callable[[Batch], np.ndarray],
    tokenizer: object,
    texts: Sequence[str],
    input_names: Sequence[str],
    max_length: int,
    batch_size: int = 32,
) -> np.ndarray:
    """Logits for every text (natural-length batches; the last batch may be short)."""
    batches = natural_batches(tokenizer, texts, input_names, max_length, batch_size)
    return np.concatenate([np.asarray(predict(b), dtype=np.float32) for b in batches])


def verdict(quality: Quality, agreement: Agreement, reference: Quality, thresholds: Thresholds) -> str:
    """pass / drift / fail by the matrix thresholds, relative to the FP32 reference's macro-F1."""
    ratio = quality.macro_f1 / reference.macro_f1 if reference.macro_f1 > 0 else 0.0
    if ratio < thresholds.fail_f1_ratio:
        return "fail"
    if ratio >= thresholds.pass_f1_ratio and agreement.top1 >= thresholds.pass_agreement:
        return "pass"
    return "drift"


def encoder_ops(arch: EncoderArch | DecoderArch, batch: int, seq: float) -> float | None:
    """Counted operations (2 per multiply-accumulate) of one BERT-style encoder forward pass; None for others."""
    if not isinstance(arch, EncoderArch):
        return None
    h, inter, layers, labels = arch.hidden_size, arch.intermediate_size, arch.num_hidden_layers, arch.num_labels
    tokens = batch * seq
    dense = 4 * h * h + 2 * h * inter  # Q, K, V, O projections + FFN in/out, per token
    attention = 2 * seq * h  # QK^T and AV, per token
    head = h * h + h * labels  # pooler + classifier, per sequence
    return 2.0 * (layers * tokens * (dense + attention) + batch * head)
