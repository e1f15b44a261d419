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
from typing import Any

import numpy as np

from quantmatrix.errors import QuantmatrixError
from quantmatrix.hardware import memory_bandwidth_forked_gbs, speed_probe_per_cpu_ms
from quantmatrix.inputs import encode, natural_batches
from quantmatrix.machine_lock import (
    Load,
    LoadWindow,
    TimingLock,
    busy_seconds,
    give_way,
    own_cpu_seconds,
    usable_cpus,
)
from quantmatrix.metrics import percentile_summary
from quantmatrix.records import Agreement, DecoderArch, EncoderArch, Latency, LatencySlice, Quality
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


def timed_calls(
    predict: Callable[[Batch], object],
    batches: Sequence[Batch],
    samples: list[float],
    stop: Callable[[int, float], bool],
    progress: Callable[[int, float], None] | None = None,
    collect: bool = True,
) -> None:
    """The timing loop: call `predict` on `batches` in a fixed cycle, appending each call's milliseconds
    to `samples`, until `stop(calls, seconds)` (both counted from this loop's first call) says so.

    The cycle goes on where `samples` left off, so a cell timed in slices sees its batches in the same
    order as one timed in one go. GC is paused in the loop so a collection does not land in one
    backend's samples and not another's; with `collect`, a full collection runs first (a slice after
    the first skips it: it costs about as long as a 0.1 s slice in a process holding a model).
    `progress` is called after each call, outside its sample.
    """
    gc_was_enabled = gc.isenabled()
    if collect:
        gc.collect()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        i = 0
        while True:
            batch = batches[len(samples) % len(batches)]
            t0 = time.perf_counter_ns()
            predict(batch)
            samples.append((time.perf_counter_ns() - t0) / 1e6)
            i += 1
            elapsed = (time.perf_counter_ns() - start) / 1e9
            if progress is not None:
                progress(i, elapsed)
            if stop(i, elapsed):
                break
    finally:
        if gc_was_enabled:
            gc.enable()


def with_busy_work(predict: Callable[[Batch], object], share: float) -> Callable[[Batch], object]:
    """`predict`, then a busy spin for `share` of that call's own time: a known slowdown (RunnerSpec.inject_busy).

    The spin scales with each call, so the cell is `1 + share` times slower whatever the machine does
    meanwhile; `share` 0 returns `predict` itself.
    """
    if share <= 0:
        return predict

    def slowed(batch: Batch) -> object:
        t0 = time.perf_counter_ns()
        out = predict(batch)
        until = time.perf_counter_ns() + (time.perf_counter_ns() - t0) * share
        while time.perf_counter_ns() < until:
            pass
        return out

    return slowed


def time_predict(
    predict: Callable[[Batch], object],
    inputs: Inputs,
    spec: MeasureSpec,
    on_start: Callable[[], None] | None = None,
    lock: TimingLock | None = None,
    progress: Callable[[int, float], None] | None = None,
    on_stop: Callable[[int], None] | None = None,
) -> Latency:
    """Warm up, then time calls until both `min_iterations` and `min_seconds` are reached.

    `max_seconds` and `max_iterations` cap it (the null runner would otherwise keep millions of
    microsecond samples).

    Batches are cycled in a fixed order so every variant sees the same inputs (`timed_calls`).
    `on_start` is called just before the first timed call; `progress` after each timed call, outside
    its sample, with (iterations so far, seconds since the first); `on_stop` right after the last timed
    call, with the number of calls (before the probes, so a GPU energy window ends with the loop).

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
        if on_start is not None:
            on_start()
        window = LoadWindow()
        timed_from = time.time()
        timed_calls(
            predict,
            batches,
            samples,
            lambda i, elapsed: (
                (i >= spec.min_iterations and elapsed >= spec.min_seconds)
                or elapsed >= spec.max_seconds
                or i >= spec.max_iterations
            ),
            progress,
        )
        timed_until = time.time()
        if on_stop is not None:
            on_stop(len(samples))
        load = window.stop()
        around = machine_around(probe_before, speed_probe_per_cpu_ms(), bandwidth_before, memory_bandwidth_forked_gbs())
    s = percentile_summary(samples)
    return Latency(
        samples=[round(x, 5) for x in samples],
        iterations=len(samples),
        warmup=spec.warmup,
        background_cores=load.background_cores if load else None,
        **around,
        lock_wait_s=held.lock_wait_s if held else None,
        quiet_wait_s=held.quiet_wait_s if held else None,
        timed_from=timed_from,
        timed_until=timed_until,
        load_window_s=load.window_s if load else None,
        background_share=round(load.share, 3) if load else None,
        disturbed=load.disturbed if load else None,
        **s,
    )


def machine_around(
    probe_before: list[float], probe_after: list[float], bandwidth_before: float | None, bandwidth_after: float | None
) -> dict[str, Any]:
    """Latency's probe fields from the probes before and after the timed calls: per CPU the slower of the
    two (the calls ran between them), and both bandwidth readings when both were taken."""
    probe = [max(a, b) for a, b in zip(probe_before, probe_after, strict=True)]
    bandwidth = [b for b in (bandwidth_before, bandwidth_after) if b is not None]
    return {"probe_ms": max(probe), "probe_cpus_ms": probe, "bandwidth_gbs": bandwidth if len(bandwidth) == 2 else None}


class SliceTimer:
    """One cell timed in turns (interleaved with other cells, each in its own process): `timed_calls`
    a slice at a time, with the machine's load summed over the slices and its probes around them all.

    `slice` runs only while its process holds the turn (see `quantmatrix.turns`); `enough` says when
    the cell has met the same stopping rule as `time_predict`, counted over its slices.
    """

    def __init__(self, predict: Callable[[Batch], object], inputs: Inputs, spec: MeasureSpec) -> None:
        self.predict, self.inputs, self.spec = predict, inputs, spec
        self.samples: list[float] = []
        self.slices: list[LatencySlice] = []
        self.timed_s = 0.0
        self.cpus = usable_cpus()
        self._others_s = 0.0
        self._load_s = 0.0
        self._probe_before: list[float] | None = None
        self._bandwidth_before: float | None = None
        self.group: str | None = None  # the coordinator's id (quantmatrix.turns.Turn.group)

    def warm_up(self) -> None:
        for i in range(self.spec.warmup):
            self.predict(self.inputs.batches[i % len(self.inputs.batches)])

    def enough(self) -> bool:
        n, t, sp = len(self.samples), self.timed_s, self.spec
        return (n >= sp.min_iterations and t >= sp.min_seconds) or t >= sp.max_seconds or n >= sp.max_iterations

    def slice(self, seconds: float, round_: int, group: str = "") -> None:
        """Time calls for `seconds` (at least one call) as round `round_` of turn group `group`; nothing once
        the sample cap is hit."""
        if group:
            if self.group is not None and self.group != group:
                raise QuantmatrixError(
                    f"interleaved timing: one cell given turns by two coordinators ({self.group}, {group})"
                )
            self.group = group
        if len(self.samples) >= self.spec.max_iterations:
            return
        if self._probe_before is None:  # in the cell's first turn: the machine is ours
            self._probe_before = speed_probe_per_cpu_ms()
            self._bandwidth_before = memory_bandwidth_forked_gbs()
        batches = self.inputs.batches
        # Untimed: the other cells' turns left the caches to their models.
        self.predict(batches[len(self.samples) % len(batches)])
        first, started = len(self.samples), time.time()
        busy0, own0, t0 = busy_seconds(self.cpus), own_cpu_seconds(), time.perf_counter()
        cap = self.spec.max_iterations
        timed_calls(
            self.predict,
            batches,
            self.samples,
            lambda _, elapsed: elapsed >= seconds or len(self.samples) >= cap,
            collect=not self.slices,
        )
        wall = time.perf_counter() - t0
        busy1, own1 = busy_seconds(self.cpus), own_cpu_seconds()
        # The stopping rule counts timed calls only, as time_predict's loop does (not the slice's setup).
        self.timed_s += sum(self.samples[first:]) / 1e3
        if busy0 is not None and busy1 is not None:
            self._others_s += max(0.0, (busy1 - busy0) - (own1 - own0))
            self._load_s += wall
        self.slices.append(LatencySlice(first=first, count=len(self.samples) - first, started=started, round=round_))

    def latency(self, probe_after: list[float], bandwidth_after: float | None) -> Latency:
        """The cell's Latency over all its slices; `probe_after`/`bandwidth_after` were taken after the last."""
        if not self.samples:
            raise QuantmatrixError("interleaved timing: this cell was never given a turn")
        before = self._probe_before or probe_after
        around = machine_around(before, probe_after, self._bandwidth_before, bandwidth_after)
        # /proc/stat's 10 ms ticks are coarse for one 0.1 s slice; summed over all slices they resolve.
        load = None
        if self._load_s > 0:
            others = round(self._others_s / self._load_s, 3)
            load = Load(background_cores=others, cores=len(self.cpus), window_s=round(self._load_s, 3))
        return Latency(
            samples=[round(x, 5) for x in self.samples],
            iterations=len(self.samples),
            warmup=self.spec.warmup,
            background_cores=load.background_cores if load else None,
            **around,
            timed_from=self.slices[0].started,
            timed_until=self.slices[-1].started + sum(self.samples[self.slices[-1].first :]) / 1e3,
            load_window_s=load.window_s if load else None,
            background_share=round(load.share, 3) if load else None,
            disturbed=load.disturbed if load else None,
            slices=self.slices,
            turn_group=self.group,
            **percentile_summary(self.samples),
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
    out = []
    for batch in natural_batches(tokenizer, texts, input_names, max_length, batch_size):
        give_way()  # scoring is untimed: it pauses while another process times
        out.append(np.asarray(predict(batch), dtype=np.float32))
    return np.concatenate(out)


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
