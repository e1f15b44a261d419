"""Analyses: matrix entries (`[analyses.<name>]`) that study built artefacts and write one typed record.

An analysis kind is one module here named after it (`sensitivity` -> `sensitivity.py`) with one params
dataclass and one function registered with `@analysis(...)`; it returns a record class from
`quantmatrix.records` (an `AnalysisRecord`). `AnalysisJob` runs one analysis like a run job
(`python -m runners analysis --name N`, in a venv or a container alike), skips it when its record
is current, and turns any failure into a `failed` record with the reason.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quantmatrix.discovery import Registry
from quantmatrix.errors import ArtifactError, QuantmatrixError, RecordError
from quantmatrix.hardware import fingerprint
from quantmatrix.plan import REFERENCE, build_jobs
from quantmatrix.records import AnalysisRecord, Manifest, read_analysis, write_record
from quantmatrix.spec import AnalysisSpec, Matrix, MeasureSpec, RunnerSpec, VariantSpec, parse_params
from quantmatrix.store import Store, digest, now_iso
from runners import Skip

# check(spec, variants, runners) -> (key, message) when the spec cannot work for this kind, else None
Check = Callable[[AnalysisSpec, Mapping[str, VariantSpec], Mapping[str, RunnerSpec]], tuple[str, str] | None]


@dataclass(frozen=True)
class AnalysisInfo:
    kind: str
    params: type
    record: type[AnalysisRecord]
    run: Callable[[AnalysisContext, Any], AnalysisRecord] = field(repr=False)
    check: Check | None = field(default=None, repr=False)


_KINDS: Registry[AnalysisInfo] = Registry("analysis", __name__)


def analysis(
    kind: str, *, params: type, record: type[AnalysisRecord], check: Check | None = None
) -> Callable[..., Any]:
    """Register `run(ctx, params) -> record` for analysis `kind` (must match its module's file name)."""

    def info(fn: Callable[[AnalysisContext, Any], AnalysisRecord]) -> AnalysisInfo:
        return AnalysisInfo(kind=kind, params=params, record=record, check=check, run=fn)

    return _KINDS.register(kind, info)


def registry() -> Mapping[str, AnalysisInfo]:
    """All analysis kinds, by importing every module in this package (their heavy imports are lazy)."""
    return _KINDS.discover()


def output_path(results: Path, run_id: str, name: str) -> Path:
    return results / run_id / "analyses" / f"{name}.json"


@dataclass
class AnalysisContext:
    """What an analysis may read; it writes nothing itself (the job writes the record it returns)."""

    matrix: Matrix
    spec: AnalysisSpec
    store: Store
    run_id: str
    key: str
    keys: dict[str, str]  # variant -> artefact key (with "reference")
    measure: MeasureSpec
    started: str
    log: Callable[[str], None] = print

    def load(self, variant: str) -> tuple[Path, Manifest]:
        """The built artefact of `variant` (files verified), or an ArtifactError naming what is missing."""
        key = self.keys[variant]
        return self.store.path(key), self.store.load(key, verify=True)

    def base(self, **fields: Any) -> dict[str, Any]:
        """The fields every analysis record carries, for `Record(**ctx.base(...), kind fields...)`."""
        return {
            "kind": self.spec.kind,
            "run_id": self.run_id,
            "analysis": self.spec.name,
            "model": self.spec.model,
            "key": self.key,
            "fingerprint": fingerprint(),
            "started": self.started,
            "finished": now_iso(),
            **fields,
        }


class AnalysisJob:
    """One `[analyses.<name>]` entry on this machine: run it, or find its record current."""

    def __init__(
        self,
        matrix: Matrix,
        name: str,
        *,
        artifacts: Path,
        results: Path,
        run_id: str,
        profile: str | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        if name not in matrix.analyses:
            raise QuantmatrixError(f"{matrix.path}: unknown analysis {name!r}; defined: {sorted(matrix.analyses)}")
        self.matrix, self.log = matrix, log
        self.spec = matrix.analyses[name]
        self.measure = matrix.profile(profile).measure if profile else MeasureSpec()
        self.store = Store(artifacts)
        self.run_id = run_id
        self.path = output_path(results, run_id, name)
        needed = tuple(v for v in self.spec.variants if v != REFERENCE)
        self.keys = {j.variant: j.key for j in build_jobs(matrix, self.spec.model, needed)}
        runner_specs = {r: asdict(matrix.runners[r]) for r in self.spec.runners}
        self.key = digest(
            {
                "spec": asdict(self.spec),
                "runners": runner_specs,
                "inputs": {v: self.keys[v] for v in (*self.spec.variants, REFERENCE)},
                "threads": self.measure.threads,
            }
        )[:16]

    def is_done(self) -> bool:
        """True when an `ok` record for the same spec and artefacts exists (reruns resume)."""
        try:
            done = read_analysis(self.path)
        except RecordError:
            return False
        return done.status == "ok" and done.key == self.key

    def run(self) -> AnalysisRecord:
        info = registry().get(self.spec.kind)
        started = now_iso()
        t0 = time.perf_counter()
        if info is None:
            raise QuantmatrixError(
                f"{self.matrix.path}: analyses.{self.spec.name}.kind: unknown kind {self.spec.kind!r}"
            )
        if self.is_done():
            self.log(f"[cached] analysis {self.spec.name}: {self.path} is current")
            return read_analysis(self.path)
        ctx = AnalysisContext(
            matrix=self.matrix, spec=self.spec, store=self.store, run_id=self.run_id, key=self.key,
            keys=self.keys, measure=self.measure, started=started, log=self.log,
        )  # fmt: skip
        where = f"{self.matrix.path}: analyses.{self.spec.name}.params"
        try:
            params: Any = parse_params(info.params, dict(self.spec.params), where)
            self.log(f"[analyse] {self.spec.name} ({self.spec.kind}) on {self.spec.model}")
            record = info.run(ctx, params)
        except Skip as e:
            self.log(f"[skip  ] analysis {self.spec.name}: {e}")
            record = info.record(**ctx.base(status="skipped", reason=str(e)))
        except (ArtifactError, QuantmatrixError) as e:
            self.log(f"[failed] analysis {self.spec.name}: {e}")
            record = info.record(**ctx.base(status="failed", reason=str(e)))
        except Exception as e:  # a crash inside the analysis: record it with its traceback
            self.log(f"[failed] analysis {self.spec.name}: {type(e).__name__}: {e}")
            record = info.record(
                **ctx.base(
                    status="failed",
                    reason=f"{type(e).__name__}: {e}".splitlines()[0][:400],
                    log_tail=traceback.format_exc()[-3000:],
                )
            )
        record.wall_seconds = round(time.perf_counter() - t0, 3)
        record.finished = now_iso()
        write_record(record, self.path)
        self.log(f"[ done ] analysis {self.spec.name}: {record.status} in {record.wall_seconds:.1f}s -> {self.path}")
        return record

    def write_failure(self, reason: str, log_tail: str = "") -> None:
        """For a launcher whose job died without a record (killed, timed out): a `failed` record saying why."""
        try:
            current = read_analysis(self.path)
            if current.key == self.key and current.status == "failed":
                return  # the job wrote its own reason, which says more
        except RecordError:
            pass
        info = registry()[self.spec.kind]
        record = info.record(
            kind=self.spec.kind, run_id=self.run_id, analysis=self.spec.name, model=self.spec.model, key=self.key,
            status="failed", reason=reason, log_tail=log_tail[-3000:] or None, fingerprint=fingerprint(),
            started=now_iso(), finished=now_iso(),
        )  # fmt: skip
        write_record(record, self.path)
