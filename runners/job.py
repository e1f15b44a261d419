"""One run job: load one artefact on one runner, guard it, score it, time every (batch, seq) cell.

Each cell becomes `results/<run-id>/<cell>.json`. A cell already written for the same artefact is
kept (reruns resume); a failure anywhere becomes `failed` results with the reason, never a crash
that loses other cells.
"""

from __future__ import annotations

import os
import resource
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantmatrix.data import LabelledData, load_dataset
from quantmatrix.errors import ArtifactError, QuantmatrixError, RecordError
from quantmatrix.hardware import fingerprint, launched_at
from quantmatrix.metrics import agreement, percentile_summary, quality, top_k
from quantmatrix.plan import GENERATION, REFERENCE, build_jobs, cell_modes
from quantmatrix.progress import timing_progress
from quantmatrix.records import (
    BuildSummary,
    CanaryResult,
    Cell,
    ColdStart,
    DeviceTiming,
    Latency,
    Manifest,
    MixedPrecisionSearch,
    Result,
    read_record,
    write_record,
)
from quantmatrix.spec import Matrix, MeasureSpec, RunnerSpec, parse_params
from quantmatrix.store import Store, now_iso
from runners import LoadRequest, RunnerInfo, Session, Skip, registry
from runners.guard import (
    MIN_CANARY_AGREEMENT,
    MIN_SAMPLE_AGREEMENT,
    GuardFailure,
    check_agreement,
    check_inputs,
    check_labels,
    check_output,
)
from runners.measure import encoder_ops, predict_all, time_predict, tokenise, verdict

GUARD_SAMPLE = 64


def process_start_time() -> float:
    """Wall-clock time this process started (for cold start: process start -> first prediction).

    To the kernel's clock tick (10 ms): the start tick from /proc/self/stat against CLOCK_BOOTTIME read
    now. psutil's create_time adds that tick to /proc/stat's whole-second boot time instead, which can
    put a process start up to a second early or late (launch overheads came out negative). The tick
    count is rounded down, so the middle of that tick is the estimate (within half a tick either way).
    """
    try:
        fields = Path("/proc/self/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        started = (int(fields[19]) + 0.5) / tick  # field 22, starttime, in ticks since boot
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError, AttributeError):  # not Linux
        pass
    try:
        import psutil

        return float(psutil.Process().create_time())
    except ImportError:  # pragma: no cover - psutil is in every image
        return _MODULE_LOADED


_MODULE_LOADED = time.time()


@dataclass(frozen=True)
class CellPlan:
    batch_size: int
    seq_mode: str
    repeat: int = 0

    def file_name(self, model: str, variant: str, runner: str) -> str:
        suffix = f"__r{self.repeat}" if self.repeat else ""
        return f"{model}__{variant}__{runner}__b{self.batch_size}__{self.seq_mode}{suffix}.json"


@dataclass(frozen=True)
class Opened:
    """An artefact loaded on a runner and checked (label map, input names), with its tokenizer."""

    session: Session
    tokenizer: Any
    names: list[str]
    load_ms: float


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

    params = parse_params(info.params, dict(runner.params), f"{matrix.path}: runners.{runner.name}.params")
    check_labels(manifest, reference)
    tokenizer = AutoTokenizer.from_pretrained(str(artefact / (manifest.tokenizer or "tokenizer")))
    t_load = time.perf_counter()
    session: Session = info.load(
        LoadRequest(path=artefact, manifest=manifest, device=runner.device, threads=threads, params=params)
    )
    load_ms = (time.perf_counter() - t_load) * 1e3
    check_inputs(session.input_names, manifest, tokenizer.model_input_names)
    return Opened(session=session, tokenizer=tokenizer, names=list(session.input_names), load_ms=load_ms)


def mixed_precision_of(manifest: Manifest) -> MixedPrecisionSearch | None:
    """A mixed-precision artefact's layer search (ranking, trials, choice), for the report."""
    search = manifest.extra.get("search")
    return MixedPrecisionSearch.model_validate(search) if search is not None else None


def build_summary(manifest: Manifest) -> BuildSummary:
    return BuildSummary(
        builder=manifest.builder,
        params=manifest.params,
        build_seconds=manifest.build_seconds,
        steps=manifest.steps,
        metrics=manifest.metrics,
    )


def threads_for(spec: MeasureSpec, runner_params: dict[str, Any]) -> int:
    """Explicit thread count: runner param, else profile, else the cores this process may use."""
    explicit = runner_params.get("threads") or spec.threads
    return int(explicit) if explicit else len(os.sched_getaffinity(0))


class RunJob:
    """Everything needed to measure one (model, variant, runner) on this machine."""

    def __init__(
        self,
        matrix: Matrix,
        profile: str,
        model: str,
        variant: str,
        runner: str,
        *,
        artifacts: Path,
        results: Path,
        run_id: str,
        repeat: int = 0,
        log: Callable[[str], None] = print,
    ) -> None:
        self.matrix, self.log = matrix, log
        self.profile = matrix.profile(profile)
        self.model = matrix.models[model]
        self.variant = variant
        self.runner = matrix.runners[runner]
        self.store = Store(artifacts)
        self.out = results / run_id
        self.run_id = run_id
        jobs = {j.variant: j for j in build_jobs(matrix, model, () if variant == REFERENCE else (variant,))}
        self.key, self.ref_key = jobs[variant].key, jobs[REFERENCE].key
        measure = self.profile.measure
        self.cells = [CellPlan(b, s, repeat) for b, s in cell_modes(self.model, measure)]
        self.threads = threads_for(self.profile.measure, dict(self.runner.params))
        self.started = now_iso()

    # -- result bookkeeping -------------------------------------------------------------------
    def path(self, cell: CellPlan) -> Path:
        return self.out / cell.file_name(self.model.name, self.variant, self.runner.name)

    def pending(self, *, retry_failed: bool = True) -> list[CellPlan]:
        """Cells without a result for this artefact yet, or whose last attempt failed (a rerun resumes here)."""
        todo = []
        for cell in self.cells:
            try:
                done = read_record(Result, self.path(cell))
            except RecordError:
                todo.append(cell)
                continue
            if done.artifact_key != self.key or (retry_failed and done.status == "failed"):
                todo.append(cell)
        return todo

    def base(self, cell: CellPlan, precision: str, **fields: Any) -> Result:
        return Result(
            run_id=self.run_id,
            artifact_key=self.key,
            reference_key=self.ref_key,
            fingerprint=fingerprint(),
            threads=self.threads,
            started=self.started,
            finished=now_iso(),
            cell=Cell(
                model=self.model.name,
                variant=self.variant,
                runner=self.runner.name,
                backend=self.runner.backend,
                precision=precision,
                device=self.runner.device,
                batch_size=cell.batch_size,
                seq_mode=cell.seq_mode,
                repeat=cell.repeat,
            ),  # type: ignore[arg-type]
            **fields,
        )

    def write_all(self, cells: list[CellPlan], precision: str, status: str, reason: str, **fields: Any) -> list[Result]:
        results = []
        for cell in cells:
            r = self.base(
                cell,
                precision,
                status=status,
                reason=reason,
                verdict="skipped" if status == "skipped" else "failed",
                **fields,
            )
            write_record(r, self.path(cell))
            results.append(r)
        return results

    # -- the job --------------------------------------------------------------------------------
    def run(self) -> list[Result]:
        cells = self.pending()
        if not cells:
            self.log(f"[cached] {self.model.name}/{self.variant} on {self.runner.name}: all cells have results")
            return []
        precision = "?"
        try:
            built = self.store.read_any(self.key)
            if built is not None and built.status == "skipped":
                # The builder could not run here (no TensorRT, no GPU): every cell says why.
                precision = built.precision
                raise Skip(built.reason or "the artefact's build was skipped")
            manifest = self.store.load(self.key, verify=True)
            precision = manifest.precision
            reference = self.store.load(self.ref_key, verify=False)
            info = registry()[self.runner.backend]
            if manifest.format not in info.formats:
                raise Skip(f"backend {info.backend} does not run {manifest.format} artefacts")
            if self.model.task == GENERATION:
                from runners._generation import measure_generation

                return measure_generation(self, cells, manifest, reference, info)
            return self._measure(cells, manifest, reference, info)
        except Skip as e:
            self.log(f"[skip  ] {self.variant} on {self.runner.name}: {e}")
            return self.write_all(cells, precision, "skipped", str(e))
        except (ArtifactError, GuardFailure, QuantmatrixError) as e:
            prefix = "guard: " if isinstance(e, GuardFailure) else ""
            self.log(f"[failed] {self.variant} on {self.runner.name}: {prefix}{e}")
            return self.write_all(cells, precision, "failed", f"{prefix}{e}")
        except Exception as e:  # a runner crash: record it, keep every other cell
            tail = traceback.format_exc()[-3000:]
            self.log(f"[failed] {self.variant} on {self.runner.name}: {type(e).__name__}: {e}")
            return self.write_all(
                cells, precision, "failed", f"{type(e).__name__}: {e}".splitlines()[0][:400], log_tail=tail
            )

    def _measure(
        self, cells: list[CellPlan], manifest: Manifest, reference: Manifest, info: RunnerInfo
    ) -> list[Result]:
        measure = self.profile.measure
        artefact = self.store.path(self.key)
        data: LabelledData = load_dataset(self.matrix.dataset_for(self.model), base_dir=self.matrix.path.parent)
        labels = [reference.id2label[str(i)] for i in range(len(reference.id2label))]
        test = list(data.split("test"))
        if measure.eval_examples:
            test = test[: measure.eval_examples]
        texts = [e.text for e in test]
        ref_dir = self.store.path(self.ref_key)
        ref_logits = np.load(ref_dir / "eval" / "test_logits.npy", allow_pickle=False)[: len(test)]
        ref_canary = np.load(ref_dir / "eval" / "canary_logits.npy", allow_pickle=False)

        opened = open_artefact(self.matrix, self.runner, info, artefact, manifest, reference, self.threads)
        session, tokenizer, names, load_ms = opened.session, opened.tokenizer, opened.names, opened.load_ms
        canary_texts = [c.text for c in data.canary]

        t_first = time.perf_counter()
        first = np.asarray(session.predict(_encode(tokenizer, texts[:1], names, self.model.max_length)))
        first_ms = (time.perf_counter() - t_first) * 1e3
        launched = launched_at()
        cold = ColdStart(
            load_ms=load_ms,
            first_call_ms=first_ms,
            total_ms=(time.time() - process_start_time()) * 1e3,
            launch_ms=(process_start_time() - launched) * 1e3 if launched else None,
        )
        first_timed: list[float] = []
        check_output(first, 1, len(labels))
        if self.runner.backend != "null":
            if canary_texts:
                canary_logits = predict_all(session.predict, tokenizer, canary_texts, names, self.model.max_length)
                check_agreement("canary", canary_logits, ref_canary, MIN_CANARY_AGREEMENT, reference.id2label)
            sample = predict_all(session.predict, tokenizer, texts[:GUARD_SAMPLE], names, self.model.max_length)
            check_agreement("guard sample", sample, ref_logits[:GUARD_SAMPLE], MIN_SAMPLE_AGREEMENT, reference.id2label)

        # Quality on the whole (configured) test split, from saved logits.
        logits = predict_all(session.predict, tokenizer, texts, names, self.model.max_length)
        y = [e.label for e in test]
        q_ref = quality(y, ref_logits.argmax(-1), labels)
        scored: dict[str, Any] = {}
        if self.runner.backend != "null":
            q = quality(y, logits.argmax(-1), labels)
            agr = agreement(ref_logits, logits, texts, y, labels)
            canary_logits = (
                predict_all(session.predict, tokenizer, canary_texts, names, self.model.max_length)
                if canary_texts
                else np.zeros((0, len(labels)))
            )
            scored = {
                "quality": q,
                "agreement": agr,
                "verdict": "reference" if self.variant == REFERENCE else verdict(q, agr, q_ref, self.matrix.thresholds),
                "canary": [
                    CanaryResult(
                        text=c.text,
                        expected=c.expected,
                        top5=top_k(canary_logits[i], labels),
                        reference_top=labels[int(ref_canary[i].argmax())],
                    )
                    for i, c in enumerate(data.canary)
                ],
            }
            if measure.robustness_levels:
                scored["robustness"] = self._robustness(
                    lambda t: predict_all(session.predict, tokenizer, t, names, self.model.max_length),
                    texts, y, labels, logits, ref_logits, reference,
                )  # fmt: skip
        arch = reference.extra.get("arch")
        # The roof is a CPU GEMM (torch.mm / MatMulInteger): it says nothing about a GPU cell.
        peak = _machine_peak(self.store.root, manifest.precision) if self.runner.device == "cpu" else None
        results = []
        for cell in cells:
            inputs = tokenise(
                tokenizer, texts, names, cell.batch_size, cell.seq_mode, measure.padded_length, max_batches=64
            )
            for b in inputs.batches[:1]:
                check_output(np.asarray(session.predict(b)), cell.batch_size, len(labels))
            self.log(
                f"[time  ] {self.variant} on {self.runner.name}: batch {cell.batch_size}, {cell.seq_mode} "
                f"(seq {inputs.seq_len})"
            )
            with timing_progress(f"timing b{cell.batch_size} {cell.seq_mode}", measure) as tick:
                lat = time_predict(session.predict, inputs, measure, lambda: first_timed.append(time.time()), tick)
            device_timing = _device_timing(session, lat)
            if launched and len(first_timed) == 1:
                cold.launch_to_timed_ms = (first_timed[0] - launched) * 1e3
            ops = encoder_ops(arch, cell.batch_size, inputs.tokens_per_call / cell.batch_size) if arch else None
            achieved = ops / (lat.p50 / 1e3) if ops else None
            r = self.base(
                cell,
                manifest.precision,
                status="ok",
                latency=lat,
                cold_start=cold,
                throughput_per_s=cell.batch_size / (lat.mean / 1e3),
                peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                artifact_bytes=sum(f.size for f in manifest.files),
                ops_per_call=ops,
                achieved_ops_per_s=achieved,
                peak_ops_per_s=peak,
                runner_options={**session.options(), "threads": self.threads},
                build=build_summary(manifest),
                mixed_precision=mixed_precision_of(manifest),
                device_timing=device_timing,
                random_init=manifest.random_init,
                extra={
                    "quality_eval": "natural length, batch 32",
                    "reference_macro_f1": q_ref.macro_f1,
                    "timed_batches": len(inputs.batches),
                },
                **(scored or {"verdict": "n/a"}),
            )
            r.cell.seq_len = inputs.seq_len
            write_record(r, self.path(cell))
            results.append(r)
            self.log(
                f"[ done ] {self.variant} on {self.runner.name}: b{cell.batch_size} {cell.seq_mode} "
                f"p50 {lat.p50:.2f} ms, verdict {r.verdict}"
            )
        return results

    def _robustness(
        self,
        logits_of: Callable[[Any], np.ndarray],
        texts: list[str],
        y: list[int],
        labels: list[str],
        clean: np.ndarray,
        ref_clean: np.ndarray,
        reference: Manifest,
    ) -> Any:
        from runners import robustness

        measure = self.profile.measure
        self.log(f"[typos ] {self.variant} on {self.runner.name}: rates {list(measure.robustness_levels)}")
        loaded: list[Callable[[Any], np.ndarray]] = []

        def reference_of(p: Any) -> np.ndarray:
            if p.rate == 0:
                return ref_clean

            # The FP32 reference on the same perturbed texts: cached per reference, loaded once per job.
            def compute() -> Callable[[Any], np.ndarray]:
                if not loaded:
                    loaded.append(
                        robustness.eager_reference(self.store.root, reference, self.threads, self.model.max_length)
                    )
                return loaded[0]

            return robustness.reference_logits(self.store.root, self.ref_key, p.texts, compute)

        return robustness.measure(
            logits_of, texts, y, labels, clean, measure.robustness_levels, measure.robustness_seed, reference_of
        )


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


def _encode(tokenizer: Any, texts: list[str], names: list[str], max_length: int) -> dict[str, np.ndarray]:
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {n: np.ascontiguousarray(enc[n], dtype=np.int64) for n in names}


def _machine_peak(artifacts: Path, precision: str) -> float | None:
    """This machine's measured GEMM peak for the precision (cached per machine under artifacts/)."""
    from runners.peak import machine_peak

    kind = "int8" if "int8" in precision else "fp32"
    return machine_peak(artifacts / ".machine", fingerprint().machine_id).get(kind)
