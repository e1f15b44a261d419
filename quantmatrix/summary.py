"""Results grouped by cell across repeated rounds: the typed table the summary and the report print.

Only numbers from result files: a cell measured in several rounds shows the median of its rounds'
p50s and their spread (max/min); speed-ups are against the FP32 reference on the FP32-baseline backend
(eager, not compiled) for the same model, batch size and sequence mode (the fastest of its thread
settings); an overhead runner's p50 is shown as a share of the fastest real p50 (the harness's own
overhead). Cells are classified by the capabilities their results carry, never by backend name. Every p50 and speed-up
carries a 95% bootstrap CI from quantmatrix.stats (slices of the raw samples; see docs/statistics.md).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantmatrix.capabilities import Capability
from quantmatrix.errors import QuantmatrixError, RecordError
from quantmatrix.machine_lock import DISTURBED_SHARE
from quantmatrix.records import Result, read_record
from quantmatrix.stats import Interval, Slices, combine, median_ci, ratio_ci, slices_of

REFERENCE = "reference"
# Raw latency samples by result index, for callers that keep them apart from the records (the report).
SampleSource = Sequence[np.ndarray | Sequence[float] | None] | None
# Other processes' CPU use during timing above which a cell's latency is flagged as disturbed.
BUSY_CORES = 0.25
# Round-to-round p50 spread worth a note.
SPREAD_LIMIT = 1.15


@dataclass(frozen=True)
class CellSummary:
    model: str
    variant: str
    runner: str
    backend: str
    precision: str
    device: str
    batch_size: int
    seq_mode: str
    status: str
    reason: str | None
    verdict: str
    rounds: int
    p50_ms: float | None  # median over rounds of each round's p50
    p99_ms: float | None
    spread: float | None  # max/min of the rounds' p50s (None with one round)
    speedup: float | None  # FP32 eager baseline p50 / this p50
    overhead: float | None  # overhead runners only: p50 / fastest real p50 of the same model, batch, seq
    artifact_mb: float | None
    macro_f1: float | None
    agreement: float | None
    machine: str
    # Medians over the ok rounds, like p50/p99; None where no round measured them.
    p90_ms: float | None = None
    throughput_per_s: float | None = None
    peak_rss_mb: float | None = None
    cold_start_ms: float | None = None
    achieved_ops_per_s: float | None = None
    peak_ops_per_s: float | None = None
    threads: int | None = None
    random_init: bool = False
    background_cores: float | None = None  # the most CPU other processes took while any round was timed
    probe_spread: float | None = None  # max/min over rounds of the machine's speed probe before timing
    bandwidth_spread: float | None = None  # max/min of the memory bandwidth probes around every round's loop
    run_id: str = ""
    members: tuple[int, ...] = ()  # indices into summarise()'s input: every round of this cell, for provenance
    baseline_members: tuple[int, ...] = ()  # the rounds of the FP32 eager baseline its speed-up divides
    measures_overhead: bool = False  # its backend does no model work (Capability.MEASURES_OVERHEAD)
    fp32_baseline: bool = False  # the FP32 reference on the baseline backend, eager: what speed-ups divide
    disturbed: int = 0  # rounds timed while other work took more than DISTURBED_SHARE of the usable cores
    baseline_disturbed: bool = False  # the FP32 eager baseline of `speedup` had a disturbed round
    # 95% bootstrap CIs (quantmatrix.stats) of the pooled median and of the speed-up, and what they stand on
    # ("20 adjacent chunks", "paired, 20 rounds"); None where the raw samples were too few or absent.
    p50_low: float | None = None
    p50_high: float | None = None
    p50_ci_method: str | None = None
    speedup_low: float | None = None
    speedup_high: float | None = None
    speedup_slices: int | None = None
    speedup_method: str | None = None
    git_commit: str | None = None
    git_commit_date: str | None = None  # the commit's date, else None (then `started` orders a history)
    started: str | None = None  # the earliest round's start

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.model, self.batch_size, self.seq_mode)


def result_files(root: Path) -> list[Path]:
    """Result JSONs under `root`; analysis records (`<run>/analyses/*.json`) are another record type."""
    return [p for p in root.rglob("*.json") if p.is_file() and "analyses" not in p.relative_to(root).parts[:-1]]


def load_results(paths: Iterable[Path]) -> tuple[list[Result], list[str]]:
    """Every readable result JSON under the given files/directories, and one error line per bad file."""
    results, errors = [], []
    for root in paths:
        files = sorted(result_files(root)) if root.is_dir() else [root]
        for path in files:
            try:
                results.append(read_record(Result, path))
            except RecordError as e:
                errors.append(str(e))
    return results, errors


def _is_eager_reference(r: Result) -> bool:
    return (
        r.cell.variant == REFERENCE
        and Capability.FP32_BASELINE in r.capabilities
        and not r.runner_options.get("compile")
    )


def _measures_overhead(r: Result) -> bool:
    return Capability.MEASURES_OVERHEAD in r.capabilities


def _median(values: Iterable[float | int | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _spread(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v]
    return max(present) / min(present) if len(present) > 1 else None


def _any_disturbed(rs: Iterable[Result]) -> bool:
    return any(r.latency.disturbed for r in rs if r.status == "ok" and r.latency)


def cell_slices(results: Sequence[Result], members: Iterable[int], samples: SampleSource = None) -> Slices:
    """The ok rounds of one cell as slices for quantmatrix.stats (all rounds pooled)."""
    parts = []
    for i in members:
        r = results[i]
        if r.status == "ok" and r.latency:
            values = r.latency.samples if samples is None else samples[i]
            if values is not None and len(values):
                parts.append(
                    slices_of(
                        values,
                        r.latency.slices,
                        source=f"{r.run_id}/{r.cell.variant}@{r.cell.runner}",
                        # Slices pair within one coordinator's turns (possibly shared by two runs); results
                        # without its id pair within their run's interleaving group.
                        group=(r.latency.turn_group,) if r.latency.turn_group else (r.run_id, r.cell.repeat),
                    )
                )
    return combine(parts)


def speedup_interval(
    results: Sequence[Result], base: Iterable[int], other: Iterable[int], samples: SampleSource = None
) -> Interval | None:
    """p50(base) / p50(other) with its bootstrap CI, from the raw samples of both cells' ok rounds."""
    return ratio_ci(cell_slices(results, base, samples), cell_slices(results, other, samples))


def summarise(results: list[Result], samples: SampleSource = None) -> list[CellSummary]:
    """One row per cell and run; `samples[i]` replaces results[i]'s raw samples where a caller dropped them."""
    groups: dict[tuple[str, ...], list[Result]] = {}
    members: dict[tuple[str, ...], list[int]] = {}
    for index, r in enumerate(results):
        c = r.cell
        # Rounds of one run group together; another run on the same machine is its own row.
        ident: tuple[str, ...] = (
            r.fingerprint.machine_id, c.model, c.variant, c.runner, str(c.batch_size), c.seq_mode, r.run_id,
        )  # fmt: skip
        groups.setdefault(ident, []).append(r)
        members.setdefault(ident, []).append(index)
    rows = []
    medians: dict[tuple[str, ...], float] = {}
    for key, rs in groups.items():
        p50s = [r.latency.p50 for r in rs if r.status == "ok" and r.latency]
        if p50s:
            medians[key] = statistics.median(p50s)
    for ident, rs in sorted(groups.items()):
        machine, model, variant, runner, batch, seq, run = ident
        ok = [r for r in rs if r.status == "ok" and r.latency]
        last = max(rs, key=lambda r: r.finished)
        first = ok[0] if ok else last
        p50 = medians.get(ident)
        # The baseline is the fastest eager FP32 setting measured (e.g. every core or one thread), so no
        # speed-up is flattered by a slow baseline.
        base_ident = min(
            (
                i
                for i, g in groups.items()
                if i[0] == machine
                and i[1:2] == (model,)
                and i[4:] == (batch, seq, run)
                and all(_is_eager_reference(r) for r in g)  # any compiled round (failed ones too) disqualifies
                and i in medians
            ),
            key=lambda i: medians[i],
            default=None,
        )
        speedup = medians[base_ident] / p50 if base_ident and p50 else None
        overhead = None
        if _measures_overhead(first) and p50:
            real = [
                m
                for i, m in medians.items()
                if i[0] == machine
                and i[1] == model
                and i[4:] == (batch, seq, run)
                and not _measures_overhead(groups[i][0])
            ]
            overhead = p50 / min(real) if real else None
            speedup = None
        mine = cell_slices(results, members[ident], samples) if ok else None
        p50_ci = median_ci(mine) if mine is not None else None
        speedup_ci = (
            ratio_ci(cell_slices(results, members[base_ident], samples), mine)
            if speedup and base_ident and mine is not None
            else None
        )
        if speedup_ci is not None and speedup_ci.paired:
            # Measured side by side: the median over repeats (turn groups) of each one's speed-up, which
            # the paired CI is about; a round whose processes all ran slow cancels within it.
            speedup = speedup_ci.value
        rows.append(
            CellSummary(
                model=model,
                variant=variant,
                runner=runner,
                backend=first.cell.backend,
                precision=first.cell.precision,
                device=first.cell.device,
                batch_size=int(batch),
                seq_mode=seq,
                status="ok" if ok else last.status,
                reason=None if ok else last.reason,
                verdict=first.verdict,
                rounds=len(ok),
                p50_ms=p50,
                p99_ms=statistics.median(r.latency.p99 for r in ok if r.latency) if ok else None,
                spread=max(r.latency.p50 for r in ok if r.latency) / min(r.latency.p50 for r in ok if r.latency)
                if len(ok) > 1
                else None,
                speedup=speedup,
                overhead=overhead,
                artifact_mb=(first.artifact_bytes or 0) / 2**20 if first.artifact_bytes else None,
                macro_f1=first.quality.macro_f1 if first.quality else None,
                agreement=first.agreement.top1 if first.agreement else None,
                machine=machine,
                p90_ms=_median(r.latency.p90 for r in ok if r.latency),
                throughput_per_s=_median(r.throughput_per_s for r in ok),
                peak_rss_mb=_median(r.peak_rss_bytes / 2**20 if r.peak_rss_bytes else None for r in ok),
                cold_start_ms=_median(r.cold_start.total_ms if r.cold_start else None for r in ok),
                achieved_ops_per_s=_median(r.achieved_ops_per_s for r in ok),
                peak_ops_per_s=_median(r.peak_ops_per_s for r in ok),
                threads=first.threads,
                random_init=first.random_init,
                background_cores=max(
                    (r.latency.background_cores for r in ok if r.latency and r.latency.background_cores is not None),
                    default=None,
                ),
                probe_spread=_spread([r.latency.probe_ms for r in ok if r.latency]),
                bandwidth_spread=_spread([b for r in ok if r.latency for b in r.latency.bandwidth_gbs or ()]),
                run_id=run,
                members=tuple(members[ident]),
                measures_overhead=_measures_overhead(first),
                fp32_baseline=all(_is_eager_reference(r) for r in rs),
                disturbed=sum(1 for r in ok if r.latency and r.latency.disturbed),
                baseline_disturbed=bool(base_ident) and _any_disturbed(groups[base_ident or ident]),
                p50_low=p50_ci.low if p50_ci else None,
                p50_high=p50_ci.high if p50_ci else None,
                p50_ci_method=p50_ci.method if p50_ci else None,
                speedup_low=speedup_ci.low if speedup_ci else None,
                speedup_high=speedup_ci.high if speedup_ci else None,
                speedup_slices=speedup_ci.slices if speedup_ci else None,
                speedup_method=speedup_ci.method if speedup_ci else None,
                baseline_members=tuple(members[base_ident]) if base_ident else (),
                git_commit=first.fingerprint.git_commit,
                git_commit_date=first.fingerprint.git_commit_date,
                started=min(r.started for r in rs),
            )
        )
    return rows


def render_text(rows: list[CellSummary]) -> str:
    """A fixed-width table for terminals and issue notes."""
    if not rows:
        return "no results"
    head = (
        f"{'model':10} {'variant':32} {'runner':14} {'b':>2} {'seq':7} {'p50 ms':>8} {'p99 ms':>8} {'spread':>6} "
        f"{'speedup':>7} {'95% CI':>13} {'MB':>6} {'F1':>6} {'agree':>6}  verdict"
    )
    lines = [head, "-" * len(head)]

    def fmt(v: float | None, spec: str) -> str:
        return f"{'-':>{spec.split('.')[0]}}" if v is None else format(v, spec)

    for r in sorted(rows, key=lambda r: (r.model, r.batch_size, r.seq_mode, r.p50_ms or float("inf"))):
        if r.p50_ms is None:
            lines.append(
                f"{r.model:10} {r.variant:32} {r.runner:14} {r.batch_size:>2} {r.seq_mode:7} {'':>58}"
                f"{r.status}: {r.reason}"
            )
            continue
        speed = f"{r.speedup:.2f}x" if r.speedup else (f"{100 * r.overhead:.2f}%" if r.overhead else "-")
        ci = f"[{r.speedup_low:.2f}, {r.speedup_high:.2f}]" if r.speedup and r.speedup_low and r.speedup_high else "-"
        lines.append(
            f"{r.model:10} {r.variant:32} {r.runner:14} {r.batch_size:>2} {r.seq_mode:7} {r.p50_ms:8.2f} "
            f"{fmt(r.p99_ms, '8.2f')} {fmt(r.spread, '6.3f')} {speed:>7} {ci:>13} {fmt(r.artifact_mb, '6.1f')} "
            f"{fmt(r.macro_f1, '6.4f')} {fmt(r.agreement, '6.4f')}  {r.verdict}"
            + ("  DISTURBED" if r.disturbed else "")
        )
    lines.append("speedup: vs the FP32 reference eager; for the overhead (null) runner, its p50 as % of the fastest")
    lines.append("95% CI: bootstrap over slices of the raw samples (docs/statistics.md)")
    busy = [r for r in rows if r.background_cores is not None and r.background_cores >= BUSY_CORES]
    if busy:
        worst = max(busy, key=lambda r: r.background_cores or 0.0)
        lines.append(
            f"warning: {len(busy)} of {len(rows)} cells were timed while other processes used >= {BUSY_CORES} "
            f"cores (worst: {worst.variant} on {worst.runner}, {worst.background_cores:.2f} cores); their "
            "latencies compete with that work: rerun them on a quiet machine"
        )
    disturbed = [r for r in rows if r.disturbed]
    if disturbed:
        lines.append(
            f"DISTURBED: {len(disturbed)} of {len(rows)} cells were timed while other work took more than "
            f"{DISTURBED_SHARE:.0%} of the usable cores; no headline uses them, and rerunning with the same run id "
            "measures them again"
        )
    spread = [r for r in rows if (r.spread or 0) >= SPREAD_LIMIT]
    if spread:
        # Facts only: which of the two explanations the records can check was present (a busy machine,
        # a machine running slower); where neither was, the variance is the backend's own, run to run.
        probe = max((r.probe_spread or 1.0) for r in spread)
        busiest = max((r.background_cores or 0.0) for r in spread)
        measured = [r.bandwidth_spread for r in spread if r.bandwidth_spread]
        memory = f", memory bandwidth by up to {max(measured):.2f}x" if measured else ""
        lines.append(
            f"note: {len(spread)} cells' rounds differ by >= {SPREAD_LIMIT:.2f}x (p50 is their median); across "
            f"those rounds the speed probe moved by up to {probe:.2f}x{memory} and other processes took up to "
            f"{busiest:.2f} cores"
        )
    return "\n".join(lines)


def headlines(rows: list[CellSummary]) -> list[str]:
    """Per model and batch/seq setting: the fastest INT8 variant whose verdict is `pass`, against FP32 eager.

    The answer users run the matrix for, with the harness overhead and the worst round-to-round
    spread of the setting beside it so the ratio can be judged.
    """
    lines = []
    for machine, model, batch, seq in sorted({(r.machine, *r.key) for r in rows}):
        here = [r for r in rows if (r.machine, *r.key) == (machine, model, batch, seq) and r.p50_ms is not None]
        passing = [r for r in here if "int8" in r.precision and r.verdict == "pass" and r.speedup]
        clean = [r for r in passing if not r.disturbed and not r.baseline_disturbed]
        if passing and not clean:
            what = (
                "the FP32 eager baseline" if all(r.baseline_disturbed for r in passing) else "every passing INT8 cell"
            )
            lines.append(f"{model} b{batch} {seq}: no headline: {what} was timed while disturbed (rerun the run id)")
        passing = clean
        if not passing:
            continue
        best = min(passing, key=lambda r: r.p50_ms or float("inf"))
        # The baseline the speed-up divides (as chosen above: the fastest eager FP32 reference of the run).
        ref = min((r for r in here if r.fp32_baseline and r.run_id == best.run_id and r.p50_ms),
                  key=lambda r: r.p50_ms or 0.0, default=None)  # fmt: skip
        base_ms = ref.p50_ms if ref and ref.p50_ms else (best.p50_ms or 0.0) * (best.speedup or 0.0)
        null = next((r for r in here if r.measures_overhead), None)
        spreads = [r.spread for r in here if r.spread is not None]
        tail = f"; null runner {100 * null.overhead:.2f}% of the fastest" if null and null.overhead else ""
        tail += f"; worst spread over rounds {max(spreads):.3f}" if spreads else ""
        lines.append(
            f"{model} b{batch} {seq}: fastest passing INT8 {best.variant} on {best.runner} {best.p50_ms:.2f} ms vs "
            f"FP32 eager {base_ms:.2f} ms = {speedup_text(best)}{tail}"
        )
    return lines


def speedup_text(row: CellSummary) -> str:
    """The row's speed-up with its CI: `3.72x [3.41, 4.05] (95% CI, unpaired, 20 slices each)`."""
    if row.speedup is None:
        return "-"
    if row.speedup_low is None or row.speedup_high is None:
        return f"{row.speedup:.2f}x (no CI: too few raw samples)"
    return f"{row.speedup:.2f}x [{row.speedup_low:.2f}, {row.speedup_high:.2f}] (95% CI, {row.speedup_method})"


def launch_overheads(results: list[Result]) -> list[str]:
    """One line per runtime: what starting a job costs (launcher -> process, launcher -> first timed call).

    Every cell of a job shares its cold start, so each job counts once.
    """
    jobs: dict[str, dict[tuple[object, ...], tuple[float | None, float | None]]] = {}
    for r in results:
        cs = r.cold_start
        if r.status != "ok" or cs is None or cs.launch_ms is None:
            continue
        c = r.cell
        job = (r.run_id, r.fingerprint.machine_id, c.model, c.variant, c.runner, c.repeat)
        jobs.setdefault(r.fingerprint.runtime or "?", {})[job] = (cs.launch_ms, cs.launch_to_timed_ms)
    lines = []
    for runtime, per_job in sorted(jobs.items()):
        start = _median(v[0] for v in per_job.values())
        timed = _median(v[1] for v in per_job.values())
        # The process start is known to the kernel's 10 ms tick: a launch quicker than that reads as noise.
        started = f"{start:.0f} ms" if start is not None and start >= 10 else "under 10 ms (the clock's tick)"
        lines.append(
            f"job start on {runtime}: launcher -> process {started}, launcher -> first timed call "
            f"{timed or 0:.0f} ms (medians over {len(per_job)} run jobs; the latter includes load and scoring)"
        )
    return lines


def compare_runs(rows: list[CellSummary], base: str, other: str, tolerance: float = 0.10) -> list[str]:
    """Cell by cell, the p50 of run `other` against run `base` (e.g. containers against venvs, same threads).

    Each line carries both runs' round-to-round spreads: a ratio inside them is not a difference the
    runs can resolve. The last line counts the cells within `tolerance` and gives the median ratio.
    """
    by_run: dict[str, dict[tuple[object, ...], CellSummary]] = {base: {}, other: {}}
    for r in rows:
        if r.run_id in by_run and r.p50_ms:
            by_run[r.run_id][(r.model, r.variant, r.runner, r.batch_size, r.seq_mode)] = r
    for run, cells in by_run.items():
        if not cells:
            known = sorted({r.run_id for r in rows})
            raise QuantmatrixError(f"run {run!r} has no measured cells (runs with results: {known})")
    shared = sorted(set(by_run[base]) & set(by_run[other]), key=str)
    if not shared:
        raise QuantmatrixError(f"runs {base!r} and {other!r} measured no cell in common")
    lines = [f"{'cell':66} {base[:12]:>12} {other[:12]:>12}  ratio  spreads"]
    ratios = []
    for key in shared:
        a, b = by_run[base][key], by_run[other][key]
        if a.measures_overhead:
            continue  # microseconds of harness: a ratio of noise
        if a.threads != b.threads:
            lines.append(f"{'/'.join(map(str, key)):66} threads differ ({a.threads} vs {b.threads}): not compared")
            continue
        ratio = (b.p50_ms or 0.0) / (a.p50_ms or 1.0)
        ratios.append(ratio)
        spreads = "/".join("-" if s is None else f"{s:.2f}" for s in (a.spread, b.spread))
        lines.append(f"{'/'.join(map(str, key)):66} {a.p50_ms:10.2f}ms {b.p50_ms:10.2f}ms {ratio:6.3f} {spreads}")
    if ratios:
        within = sum(abs(x - 1) <= tolerance for x in ratios)
        lines.append(
            f"{other} / {base}: median p50 ratio {statistics.median(ratios):.3f} over {len(ratios)} cells "
            f"({min(ratios):.3f}-{max(ratios):.3f}); {within} of {len(ratios)} within {tolerance:.0%}"
        )
    return lines
