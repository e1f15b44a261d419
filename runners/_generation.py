"""Generation cells of a run job: greedy decoding timed per token, with and without the KV cache.

For each batch size and cache mode: `generation_warmup` untimed generations, then `generation_rounds`
timed passes, each generating `new_tokens` for every prompt (batch 1: one prompt at a time). Prefill is
the first step (prompt -> first token), decode every later step; raw samples are kept. Checked per
cell: tokens with the cache equal tokens without it (same artefact, same batch size); against the
FP32 reference: greedy token agreement and teacher-forced next-token top-1 and KL.
"""

from __future__ import annotations

import gc
import itertools
import resource
import statistics
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from quantmatrix.causal_lm import Stepper, greedy, kl_next_token, teacher_forced
from quantmatrix.errors import QuantmatrixError
from quantmatrix.hardware import cpu_busy_seconds, launched_at
from quantmatrix.machine_lock import TimingLock, lock_dir
from quantmatrix.metrics import percentile_summary
from quantmatrix.plan import REFERENCE
from quantmatrix.records import ColdStart, Generation, GenerationAgreement, Latency, Manifest, Result, write_record
from quantmatrix.spec import parse_params
from runners import LoadRequest, RunnerInfo
from runners._causal import load_causal
from runners.guard import GuardFailure
from runners.measure import _own_cpu_seconds

if TYPE_CHECKING:
    from runners.job import CellPlan, RunJob

# Teacher-forced next-token top-1 agreement with FP32 below which an artefact is not timed (a
# mis-wired graph, wrong positions or cache, agrees with nothing; INT8 of a random-init model
# keeps most of it).
MIN_TOP1 = 0.5


def _latency(samples: list[float], warmup: int, background: float | None) -> Latency:
    return Latency(
        samples=[round(x, 5) for x in samples],
        iterations=len(samples),
        warmup=warmup,
        background_cores=background,
        **percentile_summary(samples),
    )


def time_generation(
    stepper: Stepper, prompts: np.ndarray, batch: int, new_tokens: int, use_cache: bool, warmup: int, rounds: int
) -> dict[str, Any]:
    """Timed greedy generation over every prompt in batches of `batch`; GC paused while timing."""
    if batch > len(prompts):
        raise QuantmatrixError(
            f"generation batch size {batch} needs at least {batch} prompts, the model has {len(prompts)}"
        )
    groups = [prompts[i : i + batch] for i in range(0, len(prompts) - batch + 1, batch)]
    for _ in range(warmup):
        greedy(stepper, groups[0], new_tokens, use_cache)
    prefill: list[float] = []
    decode: list[float] = []
    per_generation: list[float] = []
    round_seconds: list[float] = []
    tokens: list[np.ndarray] = []
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    busy0, own0, start = cpu_busy_seconds(), _own_cpu_seconds(), time.perf_counter()
    try:
        for _ in range(rounds):
            total = 0.0
            out = []
            for g in groups:
                toks, ticks = greedy(stepper, g, new_tokens, use_cache, clock=time.perf_counter_ns)
                steps = [(b - a) / 1e6 for a, b in itertools.pairwise(ticks)]
                prefill.append(steps[0])
                decode.extend(steps[1:])
                per_generation.append(sum(steps))
                total += sum(steps) / 1e3
                out.append(toks)
            round_seconds.append(total)
            tokens.append(np.concatenate(out))
    finally:
        if gc_was_enabled:
            gc.enable()
    # Other processes' CPU use while timing, in cores (as for classifier cells): the samples' context.
    wall, busy1, own1 = time.perf_counter() - start, cpu_busy_seconds(), _own_cpu_seconds()
    background = None
    if busy0 is not None and busy1 is not None and wall > 0:
        background = round(max(0.0, (busy1 - busy0) - (own1 - own0)) / wall, 3)
    generated = len(groups) * batch * new_tokens
    return {
        "prefill": _latency(prefill, warmup, background),
        "decode": _latency(decode, warmup, background),
        "tokens_per_s": statistics.median(generated / s for s in round_seconds),
        "generation_ms": statistics.median(per_generation),
        "tokens": tokens[0],
        "deterministic": all(np.array_equal(tokens[0], t) for t in tokens[1:]),
    }


def measure_generation(
    job: RunJob, cells: list[CellPlan], manifest: Manifest, reference: Manifest, info: RunnerInfo
) -> list[Result]:
    """Every pending generation cell of `job` (a text-generation model) on its runner."""
    from transformers import AutoTokenizer

    from runners.job import process_start_time

    measure = job.profile.measure
    gen = job.model.generation
    artefact = job.store.path(job.key)
    ref_dir = job.store.path(job.ref_key)
    if manifest.task != "text-generation":
        raise GuardFailure(f"artefact task is {manifest.task!r}; this model's cells need a text-generation artefact")
    params = parse_params(info.params, dict(job.runner.params), f"{job.matrix.path}: runners.{job.runner.name}.params")
    evals = {
        n: np.load(ref_dir / "eval" / f"generation_{n}.npy", allow_pickle=False)
        for n in ("prompts", "tokens", "logits")
    }
    prompts, ref_tokens, ref_logits = evals["prompts"], evals["tokens"], evals["logits"]
    tokenizer = AutoTokenizer.from_pretrained(str(artefact / (manifest.tokenizer or "tokenizer")))
    t_load = time.perf_counter()
    stepper, options = load_causal(
        info.backend,
        LoadRequest(path=artefact, manifest=manifest, device=job.runner.device, threads=job.threads, params=params),
    )
    load_ms = (time.perf_counter() - t_load) * 1e3

    # Guard before timing: the output shape and vocabulary, finite values, agreement with FP32.
    t_first = time.perf_counter()
    first = np.asarray(stepper.logits(prompts[:1]))
    first_ms = (time.perf_counter() - t_first) * 1e3
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
    kl = kl_next_token(ref_logits, forced)
    launched = launched_at()
    cold = ColdStart(
        load_ms=load_ms,
        first_call_ms=first_ms,
        total_ms=(time.time() - process_start_time()) * 1e3,
        launch_ms=(process_start_time() - launched) * 1e3 if launched else None,
    )
    texts = [tokenizer.decode(p) for p in prompts]
    origin = reference.extra.get("tokenizer_origin", "")
    by_batch: dict[int, list[CellPlan]] = {}
    for cell in cells:
        by_batch.setdefault(cell.batch_size, []).append(cell)
    results: list[Result] = []
    for batch, group in by_batch.items():
        measured: dict[str, dict[str, Any]] = {}
        for cell in group:
            use_cache = cell.seq_mode == "kv-cache"
            if use_cache and not stepper.has_past:
                r = job.base(
                    cell, manifest.precision, status="skipped", verdict="skipped", random_init=manifest.random_init,
                    reason="graph exported without past key/values: no KV cache to measure",
                )  # fmt: skip
                write_record(r, job.path(cell))
                results.append(r)
                continue
            job.log(
                f"[time  ] {job.variant} on {job.runner.name}: batch {batch}, {cell.seq_mode}, {gen.new_tokens} tokens"
            )
            with TimingLock(lock_dir(job.store.root), log=job.log).turn():  # never beside another process's timing
                measured[cell.seq_mode] = time_generation(
                    stepper,
                    prompts,
                    batch,
                    gen.new_tokens,
                    use_cache,
                    measure.generation_warmup,
                    measure.generation_rounds,
                )
        cache_equal = (
            bool(np.array_equal(measured["kv-cache"]["tokens"], measured["no-cache"]["tokens"]))
            if len(measured) == 2
            else None
        )
        for cell in group:
            if cell.seq_mode not in measured:
                continue
            m = measured[cell.seq_mode]
            tokens = m["tokens"]
            diverge = [
                int(np.argmax(row != ref)) if (row != ref).any() else None
                for row, ref in zip(tokens, ref_tokens, strict=True)
            ]
            agreement = GenerationAgreement(
                prompts=len(prompts), new_tokens=gen.new_tokens, token_agreement=float((tokens == ref_tokens).mean()),
                exact_match=float(np.mean([d is None for d in diverge])), first_divergence=diverge, top1=top1,
                mean_kl=float(kl.mean()), max_kl=float(kl.max()),
            )  # fmt: skip
            if job.variant == REFERENCE:
                verdict = "reference"
            elif cache_equal is False and manifest.precision == "fp32":
                verdict = "fail"  # FP32 must give the same tokens with and without the cache
            else:
                verdict = "pass" if top1 >= job.matrix.thresholds.pass_agreement else "drift"
            generation = Generation(
                kv_cache=cell.seq_mode == "kv-cache", batch_size=batch, prompts=len(prompts),
                prompt_tokens=prompts.shape[1], new_tokens=gen.new_tokens, rounds=measure.generation_rounds,
                prefill=m["prefill"], decode=m["decode"],
                tokens_per_s=m["tokens_per_s"], generation_ms=m["generation_ms"], tokens=tokens.tolist(), texts=texts,
                deterministic=m["deterministic"], cache_equal=cache_equal, agreement=agreement, tokenizer=origin,
            )  # fmt: skip
            r = job.base(
                cell,
                manifest.precision,
                status="ok",
                verdict=verdict,
                latency=m["decode"],
                throughput_per_s=m["tokens_per_s"],
                cold_start=cold,
                peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                artifact_bytes=sum(f.size for f in manifest.files),
                runner_options={**options, "threads": job.threads},
                random_init=manifest.random_init,
                generation=generation,
                extra={
                    "latency_is": "per-token decode latency (one call per generated token after the first)",
                    "throughput_is": "generated tokens per second",
                    "quality_is": "agreement with FP32 only" if manifest.random_init else "agreement with FP32",
                },
            )
            r.cell.seq_len = int(prompts.shape[1])
            write_record(r, job.path(cell))
            results.append(r)
            job.log(
                f"[ done ] {job.variant} on {job.runner.name}: b{batch} {cell.seq_mode} prefill p50 "
                f"{m['prefill'].p50:.2f} ms, decode p50 {m['decode'].p50:.2f} ms/token, "
                f"{m['tokens_per_s']:.1f} tokens/s, cache==no-cache {cache_equal}, verdict {verdict}"
            )
    return results
