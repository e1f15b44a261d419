"""A cell's numbers across runs, ordered by commit date, with steps marked.

Step detector (docs/statistics.md): between two consecutive runs of one cell on one machine, a latency
step is marked when quantmatrix.stats.change_test calls the change significant *and* the p50 moved by
more than STEP_PCT percent; a quality step whenever macro-F1 differs (quality is exact: same examples).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from quantmatrix.records import Result
from quantmatrix.stats import change_test
from quantmatrix.summary import CellSummary, SampleSource, cell_slices

STEP_PCT = 5.0


@dataclass(frozen=True)
class Point:
    row: CellSummary
    when: str  # the commit's date, else the run's start
    step: str | None = None  # "slower 12.3% (Mann-Whitney U ..., p=...)" / "macro-F1 0.9000 -> 0.8800"


@dataclass(frozen=True)
class Series:
    """One cell (machine, model, variant, runner, batch, seq) over runs, oldest first."""

    key: tuple[str, str, str, str, int, str]
    points: tuple[Point, ...]

    @property
    def steps(self) -> int:
        return sum(p.step is not None for p in self.points)


def _when(row: CellSummary) -> str:
    return row.git_commit_date or row.started or ""


def _step(results: Sequence[Result], before: CellSummary, after: CellSummary, samples: SampleSource) -> str | None:
    found = []
    if before.p50_ms and after.p50_ms:
        test = change_test(cell_slices(results, before.members, samples), cell_slices(results, after.members, samples))
        moved = 100 * (after.p50_ms / before.p50_ms - 1)
        if test is not None and test.significant and abs(moved) > STEP_PCT:
            found.append(
                f"{'slower' if moved > 0 else 'faster'} {abs(moved):.1f}% ({test.method}, p={test.p_value:.2g})"
            )
    if before.macro_f1 is not None and after.macro_f1 is not None and before.macro_f1 != after.macro_f1:
        found.append(f"macro-F1 {before.macro_f1:.4f} -> {after.macro_f1:.4f}")
    return "; ".join(found) or None


def history(results: Sequence[Result], rows: Sequence[CellSummary], samples: SampleSource = None) -> list[Series]:
    """Every cell measured in at least two runs, as a series with its steps (rows from `summarise`)."""
    cells: dict[tuple[str, str, str, str, int, str], list[CellSummary]] = {}
    for r in rows:
        cells.setdefault((r.machine, r.model, r.variant, r.runner, r.batch_size, r.seq_mode), []).append(r)
    out = []
    for key, runs in sorted(cells.items()):
        if len(runs) < 2:
            continue
        runs.sort(key=lambda r: (_when(r), r.started or "", r.run_id))
        points = [Point(runs[0], _when(runs[0]))]
        points += [Point(b, _when(b), _step(results, a, b, samples)) for a, b in itertools.pairwise(runs)]
        out.append(Series(key, tuple(points)))
    return out
