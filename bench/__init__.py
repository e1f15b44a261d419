"""Orchestration: plan a matrix profile into build and run jobs, launch each in isolation, summarise.

The same job commands (`python -m builders job ...`, `python -m runners job ...`) run in every
runtime; only the launcher differs (a subprocess in this venv, or a `docker run --rm`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

from quantmatrix.capabilities import Capabilities, Capability
from quantmatrix.errors import QuantmatrixError, SpecError
from quantmatrix.hardware import LAUNCHED_AT_ENV
from quantmatrix.machine_lock import TimingLock, lock_dir
from quantmatrix.plan import GENERATION, REFERENCE, build_jobs, cell_modes, variants_for
from quantmatrix.progress import ProgressEvent, is_harmless, is_warning, parse_event
from quantmatrix.spec import Matrix
from quantmatrix.store import Store
from quantmatrix.turns import Coordinator

LOG_TAIL = 3000
TURNS_DIR = ".turns"  # under results/<run-id>/: one directory of named pipes per turn group


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
    turns: str = ""  # interleaved timing: the turn group (model and round) whose jobs run side by side
    state: str = "queued"
    seconds: float = 0.0
    reason: str = ""
    log_tail: str = ""
    log_path: Path | None = None  # the job's whole output, when the launch was given a log directory
    # Another checkout's job (`--side-by-side`): its run id, the interpreter and directory it runs with,
    # and whether its own planner found it done already.
    side: str = ""
    python: str | None = None
    cwd: str | None = None
    done: bool = False


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
    build_argv = ["-m", "builders", "job", *common]
    jobs: list[Job] = []
    build_names: dict[tuple[str, str], str] = {}
    build_keys: dict[tuple[str, str], str] = {}
    cells = 0
    rounds = repeats or prof.measure.repeats
    pairs: list[tuple[str, str, str]] = []  # (model, variant, runner)
    for model in prof.models:
        variants = variants_for(matrix, model, prof.variants)  # a variant's `models` list restricts it
        for b in build_jobs(matrix, model, variants):
            name = f"build {model}/{b.variant}"
            build_names[(model, b.variant)] = name
            build_keys[(model, b.variant)] = b.key
            jobs.append(
                Job(
                    kind="build",
                    name=name,
                    key=b.key,
                    model=model,
                    variant=b.variant,
                    device=device,
                    argv=[*build_argv, "--model", model, "--variant", b.variant, "--expect-key", b.key],
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
                        "--expect-key",
                        build_keys[(model, variant)],
                    ],
                )
            )
            if prof.measure.slice_seconds > 0 and matrix.models[model].task != GENERATION:
                # The cells of one model and round take turns in random order, each job in its own process.
                job = jobs[-1]
                job.turns = f"{model}-r{repeat}"
                job.argv += [
                    "--turns",
                    f"{results_arg}/{run_id}/{TURNS_DIR}/{job.turns}",
                    "--turn-name",
                    turn_name(job, run_id),
                ]
            cells += len(cell_modes(matrix.models[model], prof.measure))
    jobs += analysis_jobs(matrix, profile, device, build_names, common, results_arg, run_id)
    return Plan(jobs=jobs, cells=cells)


def turn_name(job: Job, run_id: str) -> str:
    """A run job's participant name in its turn group: `run-id:variant@runner`, unique when two runs share
    the group (`--side-by-side`). Names have no spaces or '/'."""
    return f"{run_id}:{job.variant}@{job.runner}"


PLAN_FORMAT = "quantmatrix-plan/1"
_JOB_FIELDS = ("kind", "name", "argv", "deps", "key", "model", "variant", "runner", "repeat", "device", "turns")


class SideBySideError(QuantmatrixError):
    """Another checkout's plan cannot run beside this run: unreadable, or planned for something else."""


@dataclass(frozen=True)
class SidePlan:
    """Another checkout's exported plan (`python -m bench --export-plan`): its jobs, and how to run them."""

    path: Path
    run_id: str
    profile: str
    device: str
    python: str
    cwd: Path
    artifacts: Path
    results: Path
    cells: int
    jobs: list[Job]


def export_plan(
    p: Plan, path: Path, *, run_id: str, profile: str, device: str, artifacts: Path, results: Path,
    is_done: Callable[[Job], bool],
) -> None:  # fmt: skip
    """Write this checkout's plan for another checkout's `--side-by-side`: every job's argv, with the
    interpreter and directory to run it in (this one's), and which run jobs are already done."""
    from quantmatrix.records import atomic_write_text

    doc = {
        "format": PLAN_FORMAT,
        "run_id": run_id,
        "profile": profile,
        "device": device,
        "python": sys.executable,
        "cwd": os.getcwd(),
        "artifacts": str(artifacts.resolve()),
        "results": str(results.resolve()),
        "cells": p.cells,
        "jobs": [{**{f: getattr(j, f) for f in _JOB_FIELDS}, "done": j.kind != "build" and is_done(j)} for j in p.jobs],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")


def read_side_plan(path: Path) -> SidePlan:
    """An exported plan, checked: a clear error naming the file and the key at fault."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SideBySideError(f"{path}: cannot read the plan: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != PLAN_FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise SideBySideError(f"{path}: format: expected {PLAN_FORMAT!r}, found {found!r} (export it with "
                              "`python -m bench --export-plan`)")  # fmt: skip
    for key, kind in (("run_id", str), ("profile", str), ("device", str), ("python", str), ("cwd", str),
                      ("artifacts", str), ("results", str), ("cells", int), ("jobs", list)):  # fmt: skip
        if not isinstance(doc.get(key), kind):
            raise SideBySideError(f"{path}: {key}: expected a {kind.__name__}, found {doc.get(key)!r}")
    jobs = []
    for i, raw in enumerate(doc["jobs"]):
        missing = [f for f in (*_JOB_FIELDS, "done") if not isinstance(raw, dict) or f not in raw]
        if missing:
            raise SideBySideError(f"{path}: jobs[{i}]: missing {', '.join(missing)}")
        for key in ("argv", "deps"):
            if not isinstance(raw[key], list) or not all(isinstance(a, str) for a in raw[key]):
                raise SideBySideError(f"{path}: jobs[{i}].{key}: expected a list of strings, found {raw[key]!r}")
        jobs.append(Job(**{f: raw[f] for f in _JOB_FIELDS}, done=bool(raw["done"])))
    return SidePlan(
        path=path, run_id=doc["run_id"], profile=doc["profile"], device=doc["device"], python=doc["python"],
        cwd=Path(doc["cwd"]), artifacts=Path(doc["artifacts"]), results=Path(doc["results"]), cells=doc["cells"],
        jobs=jobs,
    )  # fmt: skip


def side_by_side(ours: Plan, theirs: SidePlan, *, run_id: str, device: str, artifacts: Path, turns_root: Path) -> Plan:
    """Our jobs and another checkout's in one plan, their run jobs in our turn groups.

    Builds come first (both sides' artefacts go to one store: keys hash the code that builds them, so a
    builder that differs builds twice and one that does not builds once); then the run jobs. Their run
    job of turn group `minilm-r0` joins ours of that name: the cells of both runs take turns in one
    random order, round by round, so `compare` pairs them by round. Their jobs run with their own
    interpreter, in their own directory.
    """
    where = theirs.path
    if theirs.run_id == run_id:
        raise SideBySideError(f"{where}: run_id {run_id!r} is this run's too; give the two runs different ids")
    if theirs.device != device:
        raise SideBySideError(f"{where}: device {theirs.device!r}, but this run is on {device!r}")
    if theirs.artifacts != artifacts.resolve():
        raise SideBySideError(
            f"{where}: artifacts {theirs.artifacts} is not this run's artefact store {artifacts.resolve()}; "
            "export the plan with the same --artifacts"
        )
    if not Path(theirs.python).exists():
        raise SideBySideError(f"{where}: python {theirs.python} does not exist on this machine")
    prefix = f"[{theirs.run_id}] "
    mine = {j.name for j in ours.jobs}
    theirs_jobs = []
    for j in theirs.jobs:
        job = Job(
            kind=j.kind, name=prefix + j.name, argv=list(j.argv), deps=[prefix + d for d in j.deps], key=j.key,
            model=j.model, variant=j.variant, runner=j.runner, repeat=j.repeat, device=j.device, turns=j.turns,
            side=theirs.run_id, python=theirs.python, cwd=str(theirs.cwd), done=j.done,
        )  # fmt: skip
        if job.name in mine:
            raise SideBySideError(f"{where}: job {job.name!r} collides with one of this run's")
        if job.turns:
            if "--turns" not in job.argv[:-1]:
                raise SideBySideError(f"{where}: job {j.name!r} has turn group {j.turns!r} but no --turns argument")
            job.argv[job.argv.index("--turns") + 1] = str(turns_root / job.turns)
        theirs_jobs.append(job)
    ordered = [j for kind in ("build", "run", "analysis") for side in (ours.jobs, theirs_jobs) for j in side
               if j.kind == kind]  # fmt: skip
    return Plan(jobs=ordered, cells=ours.cells + theirs.cells)


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


class Console:
    """The launcher's screen: permanent lines, one status line for the running job, warnings worth reading.

    On a terminal the status line is redrawn in place at every progress event; into a file or a
    pipe (CI logs) it is printed as a new line at most every `every` seconds, so the log stays short.
    """

    def __init__(self, out: TextIO | None = None, *, tty: bool | None = None, every: float = 30.0) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.every = every
        self._drawn = False
        self._last_status = time.monotonic()
        self._warned: set[str] = set()

    def line(self, text: str) -> None:
        self._clear()
        self.out.write(text + "\n")
        self.out.flush()
        self._last_status = time.monotonic()

    def status(self, text: str) -> None:
        if self.tty:
            width = shutil.get_terminal_size((120, 24)).columns - 1
            self.out.write("\r\x1b[K" + text[:width])
            self.out.flush()
            self._drawn = True
        elif time.monotonic() - self._last_status >= self.every:
            self.line(text)

    def warning(self, source: str, text: str) -> None:
        """A warning from a job, shown once per run however many jobs print it (all of it stays in the logs)."""
        if text not in self._warned:
            self._warned.add(text)
            self.line(f"  warning ({source}): {text}")

    def _clear(self) -> None:
        if self._drawn:
            self.out.write("\r\x1b[K")
            self._drawn = False


class JobOutput:
    """Where a running job's output lines go: all to its log file; progress events (what `parse` finds) to the
    status line; warnings not on the known-harmless list to the console."""

    def __init__(
        self,
        log_path: Path | None = None,
        *,
        on_progress: Callable[[str], None] | None = None,
        on_warning: Callable[[str], None] | None = None,
        parse: Callable[[str], ProgressEvent | None] = parse_event,
    ) -> None:
        self.log_path = log_path
        self.parse = parse
        self.on_progress = on_progress
        self.on_warning = on_warning
        self._file: TextIO | None = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            # Appended, not replaced: a resumed run keeps the log of the attempt before it. Written as it
            # comes (not atomically) so a long job can be followed with `tail -f`.
            self._file = log_path.open("a", encoding="utf-8")
            self._file.write(f"=== launched {time.strftime('%Y-%m-%dT%H:%M:%S%z')} ===\n")

    def line(self, text: str) -> None:
        if self._file is not None:
            self._file.write(text + "\n")
            self._file.flush()
        event = self.parse(text)
        if event is not None:
            if self.on_progress is not None:
                self.on_progress(event.describe())
        elif self.on_warning is not None and is_warning(text):
            self.on_warning(text.strip())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def stream(
    cmd: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    output: JobOutput | None = None,
    cwd: str | None = None,
) -> tuple[int, str]:
    """Run `cmd`, handing each line of its combined stdout/stderr to `output` as it comes.

    Returns (exit code, everything it printed); 124 when it ran past `timeout` (it is then killed).
    """
    proc = subprocess.Popen(
        list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=env, cwd=cwd
    )
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def pump(pipe: TextIO) -> None:
        for text in pipe:
            lines.put(text)
        lines.put(None)

    threading.Thread(target=pump, args=(proc.stdout,), daemon=True).start()
    got: list[str] = []
    deadline = time.monotonic() + timeout
    exited_at = math.inf
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                proc.kill()
                proc.wait()
                return 124, "".join(got)
            try:
                item = lines.get(timeout=min(1.0, deadline - now))
            except queue.Empty:
                if proc.poll() is not None:
                    exited_at = min(exited_at, now)
                    if now - exited_at > 2:  # a grandchild holds the pipe open; the job itself is over
                        break
                continue
            if item is None:
                break
            got.append(item)
            if output is not None:
                output.line(item.rstrip("\n"))
        return proc.wait(), "".join(got)
    except BaseException:  # Ctrl-C: never leave the job running behind us
        proc.kill()
        proc.wait()
        raise


class Launcher:
    """Runs one job's argv in isolation; returns (exit code, combined output).

    This one runs it as a subprocess of this interpreter: `--runtime venv` (nox's venv) or `local`.
    """

    name = "local"

    def describe(self) -> str:
        return f"{self.name} ({sys.prefix})"

    def launch(self, job: Job, timeout: float, output: JobOutput | None = None) -> tuple[int, str]:
        # Unbuffered, so stdout and stderr lines reach the log in the order the job printed them.
        env = {**os.environ, LAUNCHED_AT_ENV: repr(time.time()), "PYTHONUNBUFFERED": "1"}
        # Another checkout's job (--side-by-side) runs with its interpreter, in its directory.
        python = job.python or sys.executable
        return stream([python, *job.argv], timeout=timeout, env=env, output=output, cwd=job.cwd)


def quiet_output(output: str) -> str:
    """A job's output without progress events and known-harmless notices: what a failure record keeps."""
    return "\n".join(ln for ln in output.splitlines() if parse_event(ln) is None and not is_harmless(ln))


def log_name(job: Job) -> str:
    """The job's log file name: its name with anything but letters, digits, `.` and `-` as `_`."""
    return re.sub(r"[^\w.-]+", "_", job.name).strip("_") + ".log"


def failure_line(output: str) -> str:
    """The line of a job's output that says why it failed (not a warning printed after it)."""
    lines = [ln.strip() for ln in quiet_output(output).splitlines() if ln.strip()]
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
    console: Console | None = None,
    log_dir: Path | None = None,
    turns_root: Path | None = None,
) -> list[Job]:
    """Run jobs in dependency order. A failed build fails its dependants' runs with its reason; others go on.

    With a `console`, lines go to it (not `log`) and each running job's progress redraws its status
    line; with a `log_dir`, each job's whole output is kept in `<log_dir>/<job name>.log`. Run jobs
    of one turn group (`Job.turns`, interleaved timing) are launched together and take turns through
    a coordinator whose pipes live under `turns_root` (this machine's path of the jobs' turn directory).
    """
    if console is not None:
        log = console.line
    jobs = plan_.jobs
    by_name = plan_.by_name()
    # Only temp directories whose build died: another run's build in progress is left alone.
    store.clean_partials()
    total = len(jobs)
    t_start = time.perf_counter()

    def launch(i: int, job: Job) -> None:
        log(_line(i, total, job, "running", t_start))
        job.log_path = log_dir / log_name(job) if log_dir is not None else None
        output = _job_output(i, total, job, t_start, console)
        t0 = time.perf_counter()
        try:
            code, text = launcher.launch(job, timeout, output)
        finally:
            output.close()
        job.seconds = time.perf_counter() - t0
        job.log_tail = quiet_output(text)[-LOG_TAIL:]
        if code == 0:
            job.state = "done"
        else:
            job.state = "failed"
            job.reason = f"{exit_reason(code, timeout)}: {failure_line(text)[:300]}"
            if on_failure is not None:
                on_failure(job)

    served: set[str] = set()
    for i, job in enumerate(jobs, 1):
        if job.turns and turns_root is not None:
            if job.turns not in served:
                served.add(job.turns)
                members = [(k, j) for k, j in enumerate(jobs, 1) if j.turns == job.turns]
                todo = []
                for k, member in members:
                    if is_done is not None and is_done(member):
                        member.state = "cached"
                        log(_line(k, total, member, member.state, t_start))
                    else:
                        todo.append((k, member))
                serve_turns(turns_root / job.turns, todo, launch, store, log)
                for k, member in todo:
                    log(_line(k, total, member, member.state, t_start))
            continue
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


def serve_turns(
    directory: Path,
    members: Sequence[tuple[int, Job]],
    launch: Callable[[int, Job], None],
    store: Store,
    log: Callable[[str], None],
) -> None:
    """Launch a turn group's run jobs side by side and grant their cells turns in random order.

    Each job loads, guards and scores on its own, then says it is ready; once all are (or have left),
    the coordinator takes the machine-wide timing lock and hands out slices until every cell has met
    its stopping rule. A job that dies is dropped and the others finish (its launcher records why).
    """
    if not members:
        return
    names = {_participant(job): job for _, job in members}
    seed = int.from_bytes(hashlib.sha256(str(directory).encode()).digest()[:4], "big")
    threads = {
        _participant(job): threading.Thread(target=launch, args=(k, job), name=job.name, daemon=True)
        for k, job in members
    }
    with Coordinator(directory, list(names), seed=seed) as coordinator:
        for thread in threads.values():
            thread.start()
        report = coordinator.serve(
            lambda name: threads[name].is_alive(),
            log=log,
            exclusive=lambda: TimingLock(lock_dir(store.root), log=log).turn(),
        )
        for thread in threads.values():
            thread.join()
    shutil.rmtree(directory, ignore_errors=True)
    log(f"[turns ] {directory.name}: {report.rounds} rounds, {report.turns} turns"
        + (f"; dropped {', '.join(report.dropped)}" if report.dropped else ""))  # fmt: skip


def _participant(job: Job) -> str:
    """The job's participant name, as its argv gives it to the job."""
    return job.argv[job.argv.index("--turn-name") + 1]


BUILD_OUTCOMES = {"done": "built", "reused": "reused after waiting", "cached": "already built", "failed": "failed"}


def build_record(jobs: Sequence[Job]) -> str:
    """What this run did for each artefact, counted: built, reused after waiting, already built, failed."""
    counts: dict[str, int] = {}
    for job in jobs:
        if job.kind == "build":
            what = BUILD_OUTCOMES.get(job.state, job.state)
            counts[what] = counts.get(what, 0) + 1
    return "builds: " + (", ".join(f"{n} {what}" for what, n in counts.items()) or "none")


def _job_output(i: int, total: int, job: Job, t_start: float, console: Console | None) -> JobOutput:
    if console is None:
        return JobOutput(job.log_path)

    def progress(detail: str) -> None:
        console.status(_line(i, total, job, "running", t_start, detail))

    return JobOutput(job.log_path, on_progress=progress, on_warning=lambda text: console.warning(job.name, text))


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = round(width * done / max(1, total))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _line(i: int, total: int, job: Job, state: str, t_start: float, detail: str = "") -> str:
    elapsed = time.perf_counter() - t_start
    took = f" {job.seconds:6.1f}s" if state in ("done", "failed") else ""
    extra = f"  {job.reason}" if state == "failed" and job.reason else ""
    if state == "failed" and job.log_path is not None:
        extra += f"  (log: {job.log_path})"
    bar = _bar(i if state != "running" else i - 1, total)
    what = f"{job.name}: {detail}" if detail else job.name
    return f"{bar} {i:3}/{total} {state:8}{took} {what}{extra}  (t+{elapsed:.0f}s)"


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
