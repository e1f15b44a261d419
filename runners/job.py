"""One run job: measure one (model, variant, runner) on this machine, one result file per (batch, seq) cell.

The job owns resume (a cell already written for the same artefact is kept), writing records and
failure handling (a failure anywhere becomes `failed` or `skipped` results with the reason, never a
crash that loses other cells). What is measured, and how, is the task's scenario (`runners.tasks`).
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from quantmatrix.errors import ArtifactError, QuantmatrixError, RecordError
from quantmatrix.hardware import fingerprint
from quantmatrix.plan import REFERENCE, build_jobs, cell_modes
from quantmatrix.records import Cell, Manifest, Result, read_record, write_record
from quantmatrix.spec import Matrix, MeasureSpec
from quantmatrix.store import Store, now_iso
from quantmatrix.turns import Participant
from runners import Skip, registry
from runners.guard import GuardFailure
from runners.tasks import CellPlan, RunContext, scenarios


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
        turns: Participant | None = None,
    ) -> None:
        self.matrix, self.log = matrix, log
        self.turns = turns  # interleaved timing: this job's side of the launcher's turn coordinator
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
        self.info = registry()[self.runner.backend]
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
            elif retry_failed and done.latency is not None and done.latency.disturbed:
                todo.append(cell)  # timed while other work took the machine: measure it again
        return todo

    def base(self, cell: CellPlan, precision: str, **fields: Any) -> Result:
        return Result(
            run_id=self.run_id,
            artifact_key=self.key,
            reference_key=self.ref_key,
            fingerprint=fingerprint(),
            threads=self.threads,
            capabilities=sorted(self.info.capabilities),
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
            ),
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
        results: list[Result] = []
        try:
            built = self.store.read_any(self.key)
            if built is not None and built.status == "skipped":
                # The builder could not run here (no TensorRT, no GPU): every cell says why.
                precision = built.precision
                raise Skip(built.reason or "the artefact's build was skipped")
            manifest = self.store.load(self.key, verify=True)
            precision = manifest.precision
            reference = self.store.load(self.ref_key, verify=False)
            if manifest.format not in self.info.formats:
                raise Skip(f"backend {self.info.backend} does not run {manifest.format} artefacts")
            for r in self._measured(cells, manifest, reference):
                write_record(r, self.path_of(r))
                results.append(r)
            return results
        except Skip as e:
            self.log(f"[skip  ] {self.variant} on {self.runner.name}: {e}")
            return results + self.write_all(self._left(cells, results), precision, "skipped", str(e))
        except (ArtifactError, GuardFailure, QuantmatrixError) as e:
            prefix = "guard: " if isinstance(e, GuardFailure) else ""
            self.log(f"[failed] {self.variant} on {self.runner.name}: {prefix}{e}")
            return results + self.write_all(self._left(cells, results), precision, "failed", f"{prefix}{e}")
        except Exception as e:  # a runner crash: record it, keep every other cell
            tail = traceback.format_exc()[-3000:]
            self.log(f"[failed] {self.variant} on {self.runner.name}: {type(e).__name__}: {e}")
            return results + self.write_all(
                self._left(cells, results), precision, "failed", f"{type(e).__name__}: {e}".splitlines()[0][:400],
                log_tail=tail,
            )  # fmt: skip

    def _measured(self, cells: list[CellPlan], manifest: Manifest, reference: Manifest) -> Iterator[Result]:
        measure = scenarios().get(self.model.task)
        if measure is None:
            raise QuantmatrixError(f"no scenario measures {self.model.task!r} models (runners/tasks/)")
        context = RunContext(
            matrix=self.matrix, measure=self.profile.measure, model=self.model, variant=self.variant,
            runner=self.runner, info=self.info, store=self.store, key=self.key, ref_key=self.ref_key,
            threads=self.threads, log=self.log, result=self.base, turns=self.turns,
        )  # fmt: skip
        return measure(context, cells, manifest, reference)

    def path_of(self, r: Result) -> Path:
        return self.path(CellPlan(r.cell.batch_size, r.cell.seq_mode, r.cell.repeat))

    def _left(self, cells: list[CellPlan], done: list[Result]) -> list[CellPlan]:
        """The cells a failure leaves without a result (those measured before it keep theirs)."""
        written = {self.path_of(r) for r in done}
        return [c for c in cells if self.path(c) not in written]
