"""Orchestration: plan a matrix profile into build and run jobs, launch each in isolation, summarise.

The same job commands (`python -m builders job ...`, `python -m runners job ...`) run in every
runtime; only the launcher differs (a subprocess in this venv, or a `docker run --rm`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from quantmatrix.capabilities import Capabilities, Capability
from quantmatrix.errors import SpecError
from quantmatrix.hardware import LAUNCHED_AT_ENV
from quantmatrix.plan import GENERATION, REFERENCE, build_jobs, cell_modes, variants_for
from quantmatrix.spec import Matrix
from quantmatrix.store import Store

LOG_TAIL = 3000


@dataclass
class Job:
    """One isolated unit of work. `argv` is run as `python <argv>` by a launcher."""

    kind: str  # "build" | "run" | "analysis"
    name: str
    argv: list[str]
    deps: list[str] = field(default_factory=list)
    key: str | None = None  # build jobs: artefact key
    model: str = ""
    variant: str = ""
    runner: str = ""
    repeat: int = 0
    device: str = "cpu"
    network: bool = False  # builders may need PyPI-free network (never hubs); runners never
    state: str = "queued"
    seconds: float = 0.0
    reason: str = ""
    log_tail: str = ""


class Backend(Protocol):
    """What planning needs to know about a backend (`runners.RunnerInfo` has it)."""

    @property
    def formats(self) -> Sequence[str]: ...

    @property
    def capabilities(self) -> Capabilities: ...


@dataclass(frozen=True)
class Plan:
    jobs: list[Job]
    cells: int  # result cells the run jobs will write

    def by_name(self) -> dict[str, Job]:
        return {j.name: j for j in self.jobs}


def plan(
    matrix: Matrix,
    profile: str,
    device: str,
    *,
    builder_formats: Mapping[str, str],
    backends: Mapping[str, Backend],
    run_id: str,
    matrix_arg: str = "matrix.toml",
    artifacts_arg: str = "artifacts",
    results_arg: str = "results",
    repeats: int | None = None,
) -> Plan:
    """All jobs for `profile` on `device`: builds, then run jobs in interleaved rounds.

    Each round runs every (variant, runner) pair once, in the same order, so a machine that slows
    down part-way through affects every variant alike; `repeats` rounds (default: the profile's)
    give each cell that many independent measurements. The reference runs on the FP32-baseline and
    overhead backends; a backend that measures harness overhead runs on the reference only (it never
    touches the model, so once per model says all) and on classifiers only (it has no generation loop).
    """
    prof = matrix.profile(profile)
    runners = [matrix.runners[r] for r in prof.runners if matrix.runners[r].device == device]
    common = ["--matrix", matrix_arg, "--artifacts", artifacts_arg]
    jobs: list[Job] = []
    build_names: dict[tuple[str, str], str] = {}
    cells = 0
    rounds = repeats or prof.measure.repeats
    pairs: list[tuple[str, str, str]] = []  # (model, variant, runner)
    for model in prof.models:
        variants = variants_for(matrix, model, prof.variants)  # a variant's `models` list restricts it
        for b in build_jobs(matrix, model, variants):
            name = f"build {model}/{b.variant}"
            build_names[(model, b.variant)] = name
            jobs.append(
                Job(
                    kind="build",
                    name=name,
                    key=b.key,
                    model=model,
                    variant=b.variant,
                    device=device,
                    argv=["-m", "builders", "job", *common, "--model", model, "--variant", b.variant],
                    deps=[build_names[(model, d)] for d in b.deps],
                )
            )
        for variant in (REFERENCE, *variants):
            v = matrix.variants.get(variant)
            builder = v.builder if v else REFERENCE
            fmt = builder_formats.get(builder)
            if fmt is None:
                raise SpecError(f"{matrix.path}: variants.{variant}.builder: unknown builder {builder!r}")
            for r in runners:
                if v is not None and v.runners and r.name not in v.runners:
                    continue
                backend = backends.get(r.backend)
                if backend is None or fmt not in backend.formats:
                    continue
                caps = backend.capabilities
                overhead = Capability.MEASURES_OVERHEAD in caps
                if variant == REFERENCE and not (overhead or Capability.FP32_BASELINE in caps):
                    continue
                if overhead and (variant != REFERENCE or matrix.models[model].task == GENERATION):
                    continue
                pairs.append((model, variant, r.name))
    for repeat in range(rounds):
        for model, variant, runner in pairs:
            tag = f" (round {repeat + 1}/{rounds})" if rounds > 1 else ""
            jobs.append(
                Job(
                    kind="run",
                    name=f"run {model}/{variant} on {runner}{tag}",
                    model=model,
                    variant=variant,
                    runner=runner,
                    repeat=repeat,
                    device=device,
                    deps=[build_names[(model, variant)]],
                    argv=[
                        "-m",
                        "runners",
                        "job",
                        *common,
                        "--results",
                        results_arg,
                        "--profile",
                        profile,
                        "--model",
                        model,
                        "--variant",
                        variant,
                        "--runner",
                        runner,
                        "--run-id",
                        run_id,
                        "--repeat",
                        str(repeat),
                    ],
                )
            )
            cells += len(cell_modes(matrix.models[model], prof.measure))
    jobs += analysis_jobs(matrix, profile, device, build_names, common, results_arg, run_id)
    return Plan(jobs=jobs, cells=cells)


def analysis_jobs(
    matrix: Matrix,
    profile: str,
    device: str,
    build_names: dict[tuple[str, str], str],
    common: list[str],
    results_arg: str,
    run_id: str,
) -> list[Job]:
    """The profile's analyses on `device` (all their runners on it), after builds of what they read.

    Builds the profile does not already plan (a variant only an analysis reads) are added here;
    `build_names` is updated in place.
    """
    jobs: list[Job] = []
    for name in matrix.profile(profile).analyses:
        a = matrix.analyses[name]
        if any(matrix.runners[r].device != device for r in a.runners):
            continue
        needed = tuple(v for v in a.variants if v != REFERENCE)
        for b in build_jobs(matrix, a.model, needed):
            if (a.model, b.variant) in build_names:
                continue
            build_names[(a.model, b.variant)] = f"build {a.model}/{b.variant}"
            jobs.append(
                Job(
                    kind="build", name=f"build {a.model}/{b.variant}", key=b.key, model=a.model, variant=b.variant,
                    device=device, argv=["-m", "builders", "job", *common, "--model", a.model, "--variant", b.variant],
                    deps=[build_names[(a.model, d)] for d in b.deps],
                )
            )  # fmt: skip
        argv = ["-m", "runners", "analysis", *common, "--results", results_arg, "--profile", profile]
        jobs.append(
            Job(
                kind="analysis", name=f"analysis {name}", model=a.model, variant=name, device=device,
                deps=[build_names[(a.model, v)] for v in (*needed, REFERENCE)],
                argv=[*argv, "--name", name, "--run-id", run_id],
            )
        )  # fmt: skip
    return jobs


class Launcher:
    """Runs one job's argv in isolation; returns (exit code, combined output).

    This one runs it as a subprocess of this interpreter: `--runtime venv` (nox's venv) or `local`.
    """

    name = "local"

    def describe(self) -> str:
        return f"{self.name} ({sys.prefix})"

    def launch(self, job: Job, timeout: float) -> tuple[int, str]:
        env = {**os.environ, LAUNCHED_AT_ENV: repr(time.time())}
        try:
            proc = subprocess.run([sys.executable, *job.argv], capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            return 124, out
        return proc.returncode, proc.stdout + proc.stderr


def failure_line(output: str) -> str:
    """The line of a job's output that says why it failed (not a warning printed after it)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for marks in (("[failed]", "error:"), ("Error:", "Error ", "Exception:", "Killed")):
        for line in reversed(lines):
            if any(m in line for m in marks):
                return line
    return lines[-1] if lines else "no output"


def exit_reason(code: int, timeout: float) -> str:
    if code == 124:
        return f"timed out after {timeout:.0f}s"
    if code == 137:
        return "killed: out of memory (exit 137)"
    if code == -9:
        return "killed by SIGKILL (the kernel's OOM killer sends this too: check memory)"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit code {code}"


def execute(
    plan_: Plan,
    launcher: Launcher,
    store: Store,
    *,
    timeout: float = 3600,
    log: Callable[[str], None] = print,
    on_failure: Callable[[Job], None] | None = None,
    is_done: Callable[[Job], bool] | None = None,
) -> list[Job]:
    """Run jobs in dependency order. A failed build fails its dependants' runs with its reason; others go on."""
    jobs = plan_.jobs
    by_name = plan_.by_name()
    # Only temp directories whose build died: another run's build in progress is left alone.
    store.clean_partials()
    total = len(jobs)
    t_start = time.perf_counter()

    def launch(i: int, job: Job) -> None:
        log(_line(i, total, job, "running", t_start))
        t0 = time.perf_counter()
        code, output = launcher.launch(job, timeout)
        job.seconds = time.perf_counter() - t0
        job.log_tail = output[-LOG_TAIL:]
        if code == 0:
            job.state = "done"
        else:
            job.state = "failed"
            job.reason = f"{exit_reason(code, timeout)}: {failure_line(output)[:300]}"
            if on_failure is not None:
                on_failure(job)

    for i, job in enumerate(jobs, 1):
        failed_deps = [d for d in job.deps if by_name[d].state == "failed"]
        if job.kind == "build" and not failed_deps and store.lookup(job.key or "") is not None:
            job.state = "cached"
        elif job.kind in ("run", "analysis") and not failed_deps and is_done is not None and is_done(job):
            job.state = "cached"  # every cell already has a result for this artefact: nothing to launch
        elif failed_deps and job.kind == "build":
            job.state, job.reason = "failed", f"needs {failed_deps[0]}, which failed"
        elif job.kind == "build" and job.key:
            # Another run building the same key holds its claim: wait for that job, then reuse its artefact.
            with store.claim(job.key).hold(log=log) as waited:
                if store.lookup(job.key) is not None:
                    job.state, job.seconds = "reused", waited
                    job.reason = f"reused after waiting {waited:.0f}s for another run's build"
                else:
                    launch(i, job)
        else:
            # run jobs with failed builds still launch: they write `failed` results saying why, or, where
            # another run built the artefact meanwhile, verify its files (sha256) before using it.
            launch(i, job)
        log(_line(i, total, job, job.state, t_start))
    return jobs


BUILD_OUTCOMES = {"done": "built", "reused": "reused after waiting", "cached": "already built", "failed": "failed"}


def build_record(jobs: Sequence[Job]) -> str:
    """What this run did for each artefact, counted: built, reused after waiting, already built, failed."""
    counts: dict[str, int] = {}
    for job in jobs:
        if job.kind == "build":
            what = BUILD_OUTCOMES.get(job.state, job.state)
            counts[what] = counts.get(what, 0) + 1
    return "builds: " + (", ".join(f"{n} {what}" for what, n in counts.items()) or "none")


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = round(width * done / max(1, total))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _line(i: int, total: int, job: Job, state: str, t_start: float) -> str:
    elapsed = time.perf_counter() - t_start
    took = f" {job.seconds:6.1f}s" if state in ("done", "failed") else ""
    extra = f"  {job.reason}" if state == "failed" and job.reason else ""
    bar = _bar(i if state != "running" else i - 1, total)
    return f"{bar} {i:3}/{total} {state:8}{took} {job.name}{extra}  (t+{elapsed:.0f}s)"


def record_failure(job: Job, matrix: Matrix, profile: str, store: Store, results: Path, run_id: str) -> None:
    """Make a job that died without saying why (killed, timed out, crashed) leave a record that does.

    A build gets a `failed` manifest (unless it wrote one itself); a run gets `failed` results for
    every cell it did not write, with the reason and the tail of its log.
    """
    from quantmatrix.hardware import fingerprint
    from quantmatrix.records import Manifest
    from quantmatrix.store import now_iso

    if job.kind == "analysis":
        from runners.analyses import AnalysisJob

        analysis = AnalysisJob(
            matrix, job.variant, artifacts=store.root, results=results, run_id=run_id, profile=profile, log=print
        )
        analysis.write_failure(job.reason, job.log_tail)
        return
    if job.kind == "build" and job.key:
        current = store.read_any(job.key)
        if current is None or current.status == "ok":
            store.record_failure(
                Manifest(
                    key=job.key, builder="?", variant=job.variant, model=job.model, format="none",
                    precision="n/a", task=matrix.models[job.model].task, status="failed", reason=job.reason,
                    environment=fingerprint(), created=now_iso(), extra={"log_tail": job.log_tail},
                )
            )  # fmt: skip
        return
    if job.kind == "run":
        from runners.job import RunJob

        run = RunJob(
            matrix, profile, job.model, job.variant, job.runner,
            artifacts=store.root, results=results, run_id=run_id, repeat=job.repeat, log=lambda _: None,
        )  # fmt: skip
        # Only cells the job left without any record: its own `failed` records say more than we can.
        run.write_all(run.pending(retry_failed=False), "?", "failed", job.reason, log_tail=job.log_tail)


def run_is_done(job: Job, matrix: Matrix, profile: str, store: Store, results: Path, run_id: str) -> bool:
    """True when every cell of a run job already has a result for the current artefact (an analysis job:
    when its record is current)."""
    if job.kind == "analysis":
        from runners.analyses import AnalysisJob

        a = AnalysisJob(matrix, job.variant, artifacts=store.root, results=results, run_id=run_id, profile=profile)
        return a.is_done()
    from runners.job import RunJob

    run = RunJob(
        matrix, profile, job.model, job.variant, job.runner,
        artifacts=store.root, results=results, run_id=run_id, repeat=job.repeat, log=lambda _: None,
    )  # fmt: skip
    return not run.pending()
