"""Task scenarios: how a run job measures one kind of model, one module per task registered with `@scenario`.

A scenario gets a `RunContext` (the cell coordinates, the backend's registry entry, where artefacts
are, how to make a result) and yields one `Result` per cell it measured; it loads, guards, scores and
times (with `runners.measure.time_predict`, the one timing loop). The run job (`runners.job`) owns
resume, writing records and failure handling; scenarios never import it and never write results.
Every public module in this package is a scenario, found by `scenarios()`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from quantmatrix.discovery import import_public_modules
from quantmatrix.hardware import launched_at
from quantmatrix.machine_lock import TimingLock, lock_dir
from quantmatrix.records import ColdStart, Manifest, Result
from quantmatrix.spec import Matrix, MeasureSpec, ModelSpec, RunnerSpec
from quantmatrix.store import Store
from quantmatrix.turns import Participant
from runners import RunnerInfo


@dataclass(frozen=True)
class CellPlan:
    """One result file a run job owes: a (batch size, sequence mode) cell in one round."""

    batch_size: int
    seq_mode: str
    repeat: int = 0

    def file_name(self, model: str, variant: str, runner: str) -> str:
        suffix = f"__r{self.repeat}" if self.repeat else ""
        return f"{model}__{variant}__{runner}__b{self.batch_size}__{self.seq_mode}{suffix}.json"


class ResultFactory(Protocol):
    """The run job's result for `cell`: its coordinates, machine and backend filled in, plus `fields`."""

    def __call__(self, cell: CellPlan, precision: str, **fields: Any) -> Result: ...


@dataclass(frozen=True)
class RunContext:
    """What a scenario gets from the run job for one (model, variant, runner)."""

    matrix: Matrix
    measure: MeasureSpec
    model: ModelSpec
    variant: str
    runner: RunnerSpec
    info: RunnerInfo
    store: Store
    key: str
    ref_key: str
    threads: int
    log: Callable[[str], None]
    result: ResultFactory
    turns: Participant | None = None  # set: time the cells in turns granted by the launcher (interleaved)

    @property
    def artefact(self) -> Path:
        return self.store.path(self.key)

    @property
    def reference_dir(self) -> Path:
        return self.store.path(self.ref_key)

    def timing_lock(self) -> TimingLock:
        """The machine-wide timing turn: no two quantmatrix processes on this host time at once."""
        return TimingLock(lock_dir(self.store.root), log=self.log)


# measure(context, pending cells, the artefact's manifest, the reference's manifest) -> one result per cell.
Measure = Callable[[RunContext, list[CellPlan], Manifest, Manifest], Iterator[Result]]

_SCENARIOS: dict[str, Measure] = {}


def scenario(task: str) -> Callable[[Measure], Measure]:
    """Register `measure` as the scenario of models whose `task` (matrix `models.<name>.task`) is `task`."""

    def wrap(fn: Measure) -> Measure:
        _SCENARIOS[task] = fn
        return fn

    return wrap


def scenarios() -> Mapping[str, Measure]:
    """Every task's scenario, by importing each public module of this package."""
    import_public_modules(__name__, __path__)
    return dict(_SCENARIOS)


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


def cold_start(load_ms: float, first_call_ms: float) -> ColdStart:
    """The job's cold start: load and first call as timed, process start and launcher -> process from the clocks."""
    launched = launched_at()
    return ColdStart(
        load_ms=load_ms,
        first_call_ms=first_call_ms,
        total_ms=(time.time() - process_start_time()) * 1e3,
        launch_ms=(process_start_time() - launched) * 1e3 if launched else None,
    )
