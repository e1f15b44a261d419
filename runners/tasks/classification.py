"""The text-classification scenario: load the artefact, guard it, score it on the test split, time every cell.

Guard before timing (label map, input names, output shape, agreement with the FP32 reference on the
canary prompts and a sample of the test split); quality and agreement on the whole configured split
from saved logits; typo robustness and the roofline where configured; then `time_predict` per
(batch size, sequence mode). Backends without `Capability.SCORES_QUALITY` (the harness-overhead
runner) are only checked for shape and timed.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from quantmatrix.capabilities import Capability
from quantmatrix.data import load_dataset
from quantmatrix.errors import QuantmatrixError
from quantmatrix.hardware import fingerprint, launched_at, memory_bandwidth_forked_gbs, speed_probe_per_cpu_ms
from quantmatrix.inputs import encode
from quantmatrix.metrics import agreement, percentile_summary, quality, top_k
from quantmatrix.plan import REFERENCE
from quantmatrix.progress import timing_progress
from quantmatrix.records import (
    BuildSummary,
    CanaryResult,
    ColdStart,
    DecoderArch,
    DeviceTiming,
    EncoderArch,
    GpuCounters,
    Latency,
    Manifest,
    MixedPrecisionSearch,
    Quality,
    Result,
    Robustness,
)
from quantmatrix.spec import Matrix, RunnerSpec, parse_params
from quantmatrix.turns import Participant
from runners import LoadRequest, RunnerInfo, Session
from runners.guard import (
    MIN_CANARY_AGREEMENT,
    MIN_SAMPLE_AGREEMENT,
    check_agreement,
    check_inputs,
    check_labels,
    check_output,
)
from runners.measure import (
    Inputs,
    SliceTimer,
    encoder_ops,
    predict_all,
    time_predict,
    tokenise,
    verdict,
    with_busy_work,
)
from runners.tasks import CellPlan, RunContext, cold_start, scenario

GUARD_SAMPLE = 64


@dataclass(frozen=True)
class Opened:
    """An artefact loaded on a runner and checked (label map, input names), with its tokenizer."""

    session: Session
    tokenizer: Any
    names: list[str]
    load_ms: float

    def logits(self, texts: Sequence[str], max_length: int) -> np.ndarray:
        """Logits for every text, in natural-length batches (what quality is scored from)."""
        return predict_all(self.session.predict, self.tokenizer, texts, self.names, max_length)


def open_artefact(
    matrix: Matrix,
    runner: RunnerSpec,
    info: RunnerInfo,
    artefact: Path,
    manifest: Manifest,
    reference: Manifest,
    threads: int,
) -> Opened:
    """Load `artefact` the way every run job does: runner params from the matrix, guard on labels and inputs."""
    from transformers import AutoTokenizer

    params: Any = parse_params(info.params, dict(runner.params), f"{matrix.path}: runners.{runner.name}.params")
    check_labels(manifest, reference)
    tokenizer = AutoTokenizer.from_pretrained(str(artefact / (manifest.tokenizer or "tokenizer")))
    t_load = time.perf_counter()
    session: Session = info.load(
        LoadRequest(path=artefact, manifest=manifest, device=runner.device, threads=threads, params=params)
    )
    load_ms = (time.perf_counter() - t_load) * 1e3
    check_inputs(session.input_names, manifest, tokenizer.model_input_names)
    return Opened(session=session, tokenizer=tokenizer, names=list(session.input_names), load_ms=load_ms)


@dataclass(frozen=True)
class TestSplit:
    """The scored examples (the configured slice of the test split) and the reference's saved outputs on them."""

    texts: list[str]
    y: list[int]
    labels: list[str]
    canary: list[Any]
    ref_logits: np.ndarray
    ref_canary: np.ndarray


def _test_split(ctx: RunContext, reference: Manifest) -> TestSplit:
    data = load_dataset(ctx.matrix.dataset_for(ctx.model), base_dir=ctx.matrix.path.parent)
    test = list(data.split("test"))
    if ctx.measure.eval_examples:
        test = test[: ctx.measure.eval_examples]
    ref_eval = ctx.reference_dir / "eval"
    return TestSplit(
        texts=[e.text for e in test],
        y=[e.label for e in test],
        labels=[reference.id2label[str(i)] for i in range(len(reference.id2label))],
        canary=list(data.canary),
        ref_logits=np.load(ref_eval / "test_logits.npy", allow_pickle=False)[: len(test)],
        ref_canary=np.load(ref_eval / "canary_logits.npy", allow_pickle=False),
    )


def _score(ctx: RunContext, opened: Opened, split: TestSplit, reference: Manifest, q_ref: Quality) -> dict[str, Any]:
    """Guard on canaries and a sample, then quality, agreement, canary top-5 and robustness (Result fields)."""
    max_length = ctx.model.max_length
    canary_logits = (
        opened.logits([c.text for c in split.canary], max_length) if split.canary else np.zeros((0, len(split.labels)))
    )
    if split.canary:
        check_agreement("canary", canary_logits, split.ref_canary, MIN_CANARY_AGREEMENT, reference.id2label)
    sample = opened.logits(split.texts[:GUARD_SAMPLE], max_length)
    check_agreement("guard sample", sample, split.ref_logits[:GUARD_SAMPLE], MIN_SAMPLE_AGREEMENT, reference.id2label)
    logits = opened.logits(split.texts, max_length)
    q = quality(split.y, logits.argmax(-1), split.labels)
    agr = agreement(split.ref_logits, logits, split.texts, split.y, split.labels)
    scored: dict[str, Any] = {
        "quality": q,
        "agreement": agr,
        "verdict": "reference" if ctx.variant == REFERENCE else verdict(q, agr, q_ref, ctx.matrix.thresholds),
        "canary": [
            CanaryResult(
                text=c.text,
                expected=c.expected,
                top5=top_k(canary_logits[i], split.labels),
                reference_top=split.labels[int(split.ref_canary[i].argmax())],
            )
            for i, c in enumerate(split.canary)
        ],
    }
    if ctx.measure.robustness_levels:
        scored["robustness"] = _robustness(ctx, lambda t: opened.logits(t, max_length), split, logits, reference)
    return scored


@scenario("text-classification")
def measure(ctx: RunContext, cells: list[CellPlan], manifest: Manifest, reference: Manifest) -> Iterator[Result]:
    """Every pending cell of a classifier artefact on the context's runner."""
    split = _test_split(ctx, reference)
    opened = open_artefact(ctx.matrix, ctx.runner, ctx.info, ctx.artefact, manifest, reference, ctx.threads)
    t_first = time.perf_counter()
    first = np.asarray(
        opened.session.predict(encode(opened.tokenizer, split.texts[:1], opened.names, ctx.model.max_length))
    )
    cold = cold_start(opened.load_ms, (time.perf_counter() - t_first) * 1e3)
    check_output(first, 1, len(split.labels))

    q_ref = quality(split.y, split.ref_logits.argmax(-1), split.labels)
    scored = _score(ctx, opened, split, reference, q_ref) if ctx.info.can(Capability.SCORES_QUALITY) else {}
    arch = reference.arch
    # The roof is a CPU GEMM (torch.mm / MatMulInteger): it says nothing about a GPU cell. Measured holding
    # the timing turn, so an interleaved job's siblings, still loading, give way meanwhile; kept only if quiet.
    peak = _machine_peak(ctx, manifest.precision) if ctx.runner.device == "cpu" else None
    first_timed: list[float] = []
    done = partial(_cell_result, ctx, opened, manifest, cold, first_timed, arch, peak, q_ref, scored)
    if ctx.turns is not None:
        yield from _interleaved(ctx, ctx.turns, cells, opened, split, first_timed, done)
        return
    for cell in cells:
        inputs = _cell_inputs(ctx, cell, opened, split)
        # CUDA sessions count GPU memory and energy over exactly the timed loop.
        counters = opened.session.device_counters() if hasattr(opened.session, "device_counters") else None
        gpu: dict[str, Any] = {}

        def started(counters: Any = counters) -> None:
            first_timed.append(time.time())
            if counters is not None:
                counters.start()

        def stopped(calls: int, counters: Any = counters, gpu: dict[str, Any] = gpu) -> None:
            if counters is not None:
                gpu.update(counters.stop(calls))

        with timing_progress(f"timing b{cell.batch_size} {cell.seq_mode}", ctx.measure) as tick:
            lat = time_predict(
                with_busy_work(opened.session.predict, ctx.runner.inject_busy),
                inputs,
                ctx.measure,
                on_start=started,
                lock=ctx.timing_lock(),
                progress=tick,
                on_stop=stopped,
            )
        yield done(cell, inputs, lat, GpuCounters(device_name=fingerprint().gpu_name, **gpu) if gpu else None)


def _interleaved(
    ctx: RunContext,
    turns: Participant,
    cells: list[CellPlan],
    opened: Opened,
    split: TestSplit,
    first_timed: list[float],
    done: Callable[[CellPlan, Inputs, Latency, GpuCounters | None], Result],
) -> Iterator[Result]:
    """Every cell warmed up, then timed a slice per turn the launcher grants (quantmatrix.turns)."""
    timers: dict[str, tuple[CellPlan, Inputs, SliceTimer]] = {}
    for cell in cells:
        inputs = _cell_inputs(ctx, cell, opened, split)
        timer = SliceTimer(with_busy_work(opened.session.predict, ctx.runner.inject_busy), inputs, ctx.measure)
        timer.warm_up()
        timers[f"b{cell.batch_size}-{cell.seq_mode}"] = (cell, inputs, timer)
    ctx.log(f"[turns ] {ctx.variant} on {ctx.runner.name}: ready with {len(timers)} cells, waiting for turns")
    turns.ready(list(timers))
    probe_after: list[float] = []
    bandwidth_after: float | None = None
    for turn in turns.turns():
        if turn.cell is None:  # the last turn, ours alone: probe the machine after all the slices
            probe_after, bandwidth_after = speed_probe_per_cpu_ms(), memory_bandwidth_forked_gbs()
            turns.finish(turn)
            break
        if turn.cell not in timers:
            raise QuantmatrixError(f"turn {turn.seq}: unknown cell {turn.cell!r}; this job has {sorted(timers)}")
        if not first_timed:
            first_timed.append(time.time())
        timers[turn.cell][2].slice(ctx.measure.slice_seconds, turn.round, turn.group)
        turns.finish(turn, [name for name, (_, _, t) in timers.items() if t.enough()])
    turns.close()
    for cell, inputs, timer in timers.values():
        yield done(cell, inputs, timer.latency(probe_after or speed_probe_per_cpu_ms(), bandwidth_after), None)


def _cell_inputs(ctx: RunContext, cell: CellPlan, opened: Opened, split: TestSplit) -> Inputs:
    """The cell's timed batches, each checked for its output shape, before anything is timed."""
    inputs = tokenise(
        opened.tokenizer, split.texts, opened.names, cell.batch_size, cell.seq_mode, ctx.measure.padded_length,
        max_batches=64,
    )  # fmt: skip
    for b in inputs.batches[:1]:
        check_output(np.asarray(opened.session.predict(b)), cell.batch_size, len(split.labels))
    ctx.log(
        f"[time  ] {ctx.variant} on {ctx.runner.name}: batch {cell.batch_size}, {cell.seq_mode} (seq {inputs.seq_len})"
    )
    return inputs


def _cell_result(
    ctx: RunContext,
    opened: Opened,
    manifest: Manifest,
    cold: ColdStart,
    first_timed: list[float],
    arch: EncoderArch | DecoderArch | None,
    peak: float | None,
    q_ref: Quality,
    scored: dict[str, Any],
    cell: CellPlan,
    inputs: Inputs,
    lat: Latency,
    gpu: GpuCounters | None,
) -> Result:
    session = opened.session
    launched = launched_at()
    if launched and len(first_timed) == 1:
        cold.launch_to_timed_ms = (first_timed[0] - launched) * 1e3
    ops = encoder_ops(arch, cell.batch_size, inputs.tokens_per_call / cell.batch_size) if arch else None
    r = ctx.result(
        cell,
        manifest.precision,
        status="ok",
        latency=lat,
        cold_start=cold,
        throughput_per_s=cell.batch_size / (lat.mean / 1e3),
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        artifact_bytes=sum(f.size for f in manifest.files),
        ops_per_call=ops,
        achieved_ops_per_s=ops / (lat.p50 / 1e3) if ops else None,
        peak_ops_per_s=peak,
        runner_options={
            **session.options(),
            "threads": ctx.threads,
            **({"inject_busy": ctx.runner.inject_busy} if ctx.runner.inject_busy else {}),
        },
        build=build_summary(manifest),
        mixed_precision=mixed_precision_of(manifest),
        device_timing=_device_timing(session, lat),
        random_init=manifest.random_init,
        quality_eval="natural length, batch 32",
        reference_macro_f1=q_ref.macro_f1,
        timed_batches=len(inputs.batches),
        gpu=gpu,
        **(scored or {"verdict": "n/a"}),
    )
    r.cell.seq_len = inputs.seq_len
    ctx.log(
        f"[ done ] {ctx.variant} on {ctx.runner.name}: b{cell.batch_size} {cell.seq_mode} "
        f"p50 {lat.p50:.2f} ms, verdict {r.verdict}"
    )
    return r


def mixed_precision_of(manifest: Manifest) -> MixedPrecisionSearch | None:
    """A mixed-precision artefact's layer search (ranking, trials, choice), for the report."""
    return manifest.search


def build_summary(manifest: Manifest) -> BuildSummary:
    return BuildSummary(
        builder=manifest.builder,
        params=manifest.params,
        build_seconds=manifest.build_seconds,
        steps=manifest.steps,
        metrics=manifest.metrics,
    )


def _robustness(
    ctx: RunContext,
    logits_of: Callable[[Any], np.ndarray],
    split: TestSplit,
    clean: np.ndarray,
    reference: Manifest,
) -> Robustness:
    from runners import robustness

    measure = ctx.measure
    ctx.log(f"[typos ] {ctx.variant} on {ctx.runner.name}: rates {list(measure.robustness_levels)}")
    loaded: list[Callable[[Any], np.ndarray]] = []

    def reference_of(p: Any) -> np.ndarray:
        if p.rate == 0:
            return split.ref_logits

        # The FP32 reference on the same perturbed texts: cached per reference, loaded once per job.
        def compute() -> Callable[[Any], np.ndarray]:
            if not loaded:
                loaded.append(robustness.eager_reference(ctx.store.root, reference, ctx.threads, ctx.model.max_length))
            return loaded[0]

        return robustness.reference_logits(ctx.store.root, ctx.ref_key, p.texts, compute)

    return robustness.measure(
        logits_of, split.texts, split.y, split.labels, clean, measure.robustness_levels, measure.robustness_seed,
        reference_of,
    )  # fmt: skip


def _device_timing(session: Session, lat: Latency) -> DeviceTiming | None:
    """The GPU-side split (CUDA events) of the timed calls, for sessions that record one."""
    timing = getattr(session, "device_timing", None)
    if timing is None:
        return None
    split = timing(lat.iterations)
    if not split or not split.get("compute"):
        return None
    parts = {k: Latency(samples=[round(x, 5) for x in v], iterations=len(v), warmup=lat.warmup, **percentile_summary(v))
             for k, v in split.items()}  # fmt: skip
    return DeviceTiming(**parts)


def _machine_peak(ctx: RunContext, precision: str) -> float | None:
    """This machine's measured GEMM peak for the precision (cached per machine under artifacts/)."""
    from runners.peak import machine_peak

    kind = "int8" if "int8" in precision else "fp32"
    cache = ctx.store.root / ".machine"
    return machine_peak(cache, fingerprint().machine_id, ctx.timing_lock(), log=ctx.log).get(kind)
