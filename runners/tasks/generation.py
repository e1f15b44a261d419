"""The text-generation scenario: greedy decoding timed per token, with and without the KV cache.

For each batch size and cache mode: `generation_warmup` untimed generations, then `generation_rounds`
timed passes, each generating `new_tokens` for every prompt (batch 1: one prompt at a time), all in
`runners.measure.time_predict` (the same loop as classifier cells: one call is one generation). Prefill
is the first step (prompt -> first token), decode every later step; raw samples are kept. Checked per
cell: tokens with the cache equal tokens without it (same artefact, same batch size); against the
FP32 reference: greedy token agreement and teacher-forced next-token top-1 and KL.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import resource
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantmatrix.capabilities import Capability
from quantmatrix.causal_lm import Stepper, greedy, kl_next_token, teacher_forced
from quantmatrix.errors import QuantmatrixError
from quantmatrix.machine_lock import TimingLock
from quantmatrix.metrics import percentile_summary
from quantmatrix.plan import REFERENCE
from quantmatrix.records import ColdStart, Generation, GenerationAgreement, Latency, Manifest, Result
from quantmatrix.spec import MeasureSpec, parse_params
from runners import LoadRequest, Skip
from runners.guard import GuardFailure
from runners.measure import Batch, Inputs, time_predict
from runners.tasks import CellPlan, RunContext, cold_start, scenario

# Teacher-forced next-token top-1 agreement with FP32 below which an artefact is not timed (a
# mis-wired graph, wrong positions or cache, agrees with nothing; INT8 of a random-init model
# keeps most of it).
MIN_TOP1 = 0.5


@dataclass(frozen=True)
class Timed:
    """One (batch size, cache mode) measured: per-step latencies, throughput and the tokens generated."""

    prefill: Latency
    decode: Latency
    tokens_per_s: float
    generation_ms: float
    tokens: np.ndarray
    deterministic: bool


def time_generation(
    stepper: Stepper,
    prompts: np.ndarray,
    batch: int,
    new_tokens: int,
    use_cache: bool,
    spec: MeasureSpec,
    lock: TimingLock | None = None,
) -> Timed:
    """Timed greedy generation over every prompt in batches of `batch`, `spec.generation_rounds` times.

    `time_predict` runs the loop (warm-up, GC paused, the machine's probes around it); each call is one
    greedy generation whose per-step clock readings give the prefill and decode samples.
    """
    if batch > len(prompts):
        raise QuantmatrixError(
            f"generation batch size {batch} needs at least {batch} prompts, the model has {len(prompts)}"
        )
    groups = [prompts[i : i + batch] for i in range(0, len(prompts) - batch + 1, batch)]
    calls = spec.generation_rounds * len(groups)
    loop = dataclasses.replace(
        spec, warmup=spec.generation_warmup, min_iterations=calls, max_iterations=calls, min_seconds=0.0,
        max_seconds=math.inf,
    )  # fmt: skip
    steps: list[list[float]] = []
    outputs: list[np.ndarray] = []

    def generate(b: Batch) -> np.ndarray:
        toks, ticks = greedy(stepper, b["input_ids"], new_tokens, use_cache, clock=time.perf_counter_ns)
        steps.append([(t1 - t0) / 1e6 for t0, t1 in itertools.pairwise(ticks)])
        outputs.append(toks)
        return toks

    def timed_from_here() -> None:  # the warm-up generations are not samples
        steps.clear()
        outputs.clear()

    inputs = Inputs(batch_size=batch, seq_mode="kv-cache" if use_cache else "no-cache",
                    batches=tuple({"input_ids": g} for g in groups))  # fmt: skip
    loop_latency = time_predict(generate, inputs, loop, on_start=timed_from_here, lock=lock)
    rounds = [range(r * len(groups), (r + 1) * len(groups)) for r in range(spec.generation_rounds)]
    tokens = [np.concatenate([outputs[i] for i in calls_of]) for calls_of in rounds]
    round_seconds = [sum(sum(steps[i]) for i in calls_of) / 1e3 for calls_of in rounds]
    generated = len(groups) * batch * new_tokens

    def latency(samples: list[float]) -> Latency:
        # The loop's context (background load, probes) with this step's samples.
        return loop_latency.model_copy(
            update={
                "samples": [round(x, 5) for x in samples],
                "iterations": len(samples),
                **percentile_summary(samples),
            }
        )

    return Timed(
        prefill=latency([s[0] for s in steps]),
        decode=latency([x for s in steps for x in s[1:]]),
        tokens_per_s=statistics.median(generated / s for s in round_seconds),
        generation_ms=statistics.median(sum(s) for s in steps),
        tokens=tokens[0],
        deterministic=all(np.array_equal(tokens[0], t) for t in tokens[1:]),
    )


@dataclass(frozen=True)
class Checked:
    """The guard's findings on a loaded LM: teacher-forced next-token agreement and KL against FP32."""

    top1: float
    kl: np.ndarray


def _guard(
    first: np.ndarray, stepper: Stepper, prompts: np.ndarray, ref_tokens: np.ndarray, ref_logits: np.ndarray
) -> Checked:
    """Guard before timing: the first call's shape and vocabulary, finite values, agreement with FP32."""
    vocab = ref_logits.shape[-1]
    if first.shape != (1, prompts.shape[1], vocab):
        raise GuardFailure(
            f"logits shape {list(first.shape)}, expected [batch=1, sequence={prompts.shape[1]}, vocab={vocab}]"
        )
    if not np.isfinite(first).all():
        raise GuardFailure("logits contain NaN or inf")
    forced = teacher_forced(stepper, prompts, ref_tokens)
    top1 = float((forced.argmax(-1) == ref_logits.argmax(-1)).mean())
    if top1 < MIN_TOP1:
        raise GuardFailure(
            f"teacher-forced next-token top-1 agreement with the FP32 reference is {top1:.0%} (< {MIN_TOP1:.0%})"
        )
    return Checked(top1=top1, kl=kl_next_token(ref_logits, forced))


@scenario("text-generation")
def measure(ctx: RunContext, cells: list[CellPlan], manifest: Manifest, reference: Manifest) -> Iterator[Result]:
    """Every pending generation cell of a text-generation artefact on the context's runner."""
    from transformers import AutoTokenizer

    if ctx.info.load_lm is None or not ctx.info.can(Capability.GENERATES):
        raise Skip(f"backend {ctx.info.backend} does not run causal-LM generation")
    if manifest.task != "text-generation":
        raise GuardFailure(f"artefact task is {manifest.task!r}; this model's cells need a text-generation artefact")
    params: Any = parse_params(
        ctx.info.params, dict(ctx.runner.params), f"{ctx.matrix.path}: runners.{ctx.runner.name}.params"
    )
    evals = {
        n: np.load(ctx.reference_dir / "eval" / f"generation_{n}.npy", allow_pickle=False)
        for n in ("prompts", "tokens", "logits")
    }
    prompts, ref_tokens, ref_logits = evals["prompts"], evals["tokens"], evals["logits"]
    tokenizer = AutoTokenizer.from_pretrained(str(ctx.artefact / (manifest.tokenizer or "tokenizer")))
    t_load = time.perf_counter()
    request = LoadRequest(
        path=ctx.artefact, manifest=manifest, device=ctx.runner.device, threads=ctx.threads, params=params
    )
    stepper, options = ctx.info.load_lm(request)
    load_ms = (time.perf_counter() - t_load) * 1e3
    t_first = time.perf_counter()
    first = np.asarray(stepper.logits(prompts[:1]))
    first_ms = (time.perf_counter() - t_first) * 1e3
    checked = _guard(first, stepper, prompts, ref_tokens, ref_logits)
    cold = cold_start(load_ms, first_ms)
    texts = [tokenizer.decode(p) for p in prompts]
    origin = reference.tokenizer_origin or ""
    gen = ctx.model.generation
    by_batch: dict[int, list[CellPlan]] = {}
    for cell in cells:
        by_batch.setdefault(cell.batch_size, []).append(cell)
    for batch, group in by_batch.items():
        measured: dict[str, Timed] = {}
        for cell in group:
            use_cache = cell.seq_mode == "kv-cache"
            if use_cache and not stepper.has_past:
                yield ctx.result(
                    cell, manifest.precision, status="skipped", verdict="skipped", random_init=manifest.random_init,
                    reason="graph exported without past key/values: no KV cache to measure",
                )  # fmt: skip
                continue
            ctx.log(
                f"[time  ] {ctx.variant} on {ctx.runner.name}: batch {batch}, {cell.seq_mode}, {gen.new_tokens} tokens"
            )
            measured[cell.seq_mode] = time_generation(
                stepper, prompts, batch, gen.new_tokens, use_cache, ctx.measure, lock=ctx.timing_lock()
            )
        cache_equal = (
            bool(np.array_equal(measured["kv-cache"].tokens, measured["no-cache"].tokens))
            if len(measured) == 2
            else None
        )
        for cell in group:
            if cell.seq_mode in measured:
                yield _result(ctx, cell, manifest, measured[cell.seq_mode], cache_equal, checked, prompts,
                              ref_tokens, texts, origin, cold, options)  # fmt: skip


def _result(
    ctx: RunContext,
    cell: CellPlan,
    manifest: Manifest,
    m: Timed,
    cache_equal: bool | None,
    checked: Checked,
    prompts: np.ndarray,
    ref_tokens: np.ndarray,
    texts: list[str],
    origin: str,
    cold: ColdStart,
    options: dict[str, Any],
) -> Result:
    gen = ctx.model.generation
    tokens = m.tokens
    diverge = [
        int(np.argmax(row != ref)) if (row != ref).any() else None for row, ref in zip(tokens, ref_tokens, strict=True)
    ]
    agreement = GenerationAgreement(
        prompts=len(prompts), new_tokens=gen.new_tokens, token_agreement=float((tokens == ref_tokens).mean()),
        exact_match=float(np.mean([d is None for d in diverge])), first_divergence=diverge, top1=checked.top1,
        mean_kl=float(checked.kl.mean()), max_kl=float(checked.kl.max()),
    )  # fmt: skip
    if ctx.variant == REFERENCE:
        verdict = "reference"
    elif cache_equal is False and manifest.precision == "fp32":
        verdict = "fail"  # FP32 must give the same tokens with and without the cache
    else:
        verdict = "pass" if checked.top1 >= ctx.matrix.thresholds.pass_agreement else "drift"
    generation = Generation(
        kv_cache=cell.seq_mode == "kv-cache", batch_size=cell.batch_size, prompts=len(prompts),
        prompt_tokens=prompts.shape[1], new_tokens=gen.new_tokens, rounds=ctx.measure.generation_rounds,
        prefill=m.prefill, decode=m.decode, tokens_per_s=m.tokens_per_s, generation_ms=m.generation_ms,
        tokens=tokens.tolist(), texts=texts, deterministic=m.deterministic, cache_equal=cache_equal,
        agreement=agreement, tokenizer=origin,
    )  # fmt: skip
    r = ctx.result(
        cell,
        manifest.precision,
        status="ok",
        verdict=verdict,
        latency=m.decode,
        throughput_per_s=m.tokens_per_s,
        cold_start=cold,
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        artifact_bytes=sum(f.size for f in manifest.files),
        runner_options={**options, "threads": ctx.threads},
        random_init=manifest.random_init,
        generation=generation,
        extra={
            "latency_is": "per-token decode latency (one call per generated token after the first)",
            "throughput_is": "generated tokens per second",
            "quality_is": "agreement with FP32 only" if manifest.random_init else "agreement with FP32",
        },
    )
    r.cell.seq_len = int(prompts.shape[1])
    ctx.log(
        f"[ done ] {ctx.variant} on {ctx.runner.name}: b{cell.batch_size} {cell.seq_mode} prefill p50 "
        f"{m.prefill.p50:.2f} ms, decode p50 {m.decode.p50:.2f} ms/token, "
        f"{m.tokens_per_s:.1f} tokens/s, cache==no-cache {cache_equal}, verdict {verdict}"
    )
    return r
