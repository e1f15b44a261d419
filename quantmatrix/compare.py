"""Two runs of the same cells, cell by cell: a stated significance test, the time ratio with its CI, and
the exact change in quality; gates for CI (`--fail-if-slower`, `--fail-if-quality-drop`).

A cell counts as slower only when the test calls the change significant *and* the ratio exceeds the
threshold, so noise inside the threshold never fails a pull request and a large but unresolved
difference is reported as such. Quality is scored on the same examples by both runs, so any change in
macro-F1 or agreement is a real change and is always reported. docs/statistics.md has the details.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from quantmatrix.errors import QuantmatrixError
from quantmatrix.records import Result
from quantmatrix.stats import ALPHA, ChangeTest, Interval, change_test, ratio_ci, relative_change
from quantmatrix.summary import CellSummary, SampleSource, cell_slices

CellKey = tuple[str, str, str, int, str]  # model, variant, runner, batch size, seq mode


def _test_text(test: ChangeTest | None) -> str:
    return "untested: too few slices" if test is None else f"{test.method}, p={test.p_value:.3g}"


@dataclass(frozen=True)
class CellChange:
    """One cell in both runs; `ratio` is other p50 / base p50 (above 1: slower)."""

    key: CellKey
    base: CellSummary | None
    other: CellSummary | None
    ratio: float | None = None
    interval: Interval | None = None  # of `ratio`
    test: ChangeTest | None = None
    note: str | None = None  # why the cell was not compared

    @property
    def name(self) -> str:
        return "/".join(map(str, self.key))

    @property
    def f1_delta(self) -> float | None:
        a, b = self.base, self.other
        return b.macro_f1 - a.macro_f1 if a and b and a.macro_f1 is not None and b.macro_f1 is not None else None

    @property
    def agreement_delta(self) -> float | None:
        a, b = self.base, self.other
        return b.agreement - a.agreement if a and b and a.agreement is not None and b.agreement is not None else None

    @property
    def test_text(self) -> str:
        return _test_text(self.test)

    @property
    def change(self) -> str:
        """slower / faster / no significant change / not compared."""
        if self.note:
            return "not compared"
        if self.test is None or self.ratio is None:
            return "not tested"
        if not self.test.significant:
            return "no significant change"
        # The test's own direction: the ratio of medians can sit on the other side of 1 when the test,
        # which compares round by round, finds a shift (the ratio is then shown beside it, as measured).
        direction = self.test.direction or (1 if self.ratio > 1 else -1)
        return "slower" if direction > 0 else "faster"


@dataclass(frozen=True)
class Gate:
    """Thresholds in percent; None leaves that check off."""

    slower_pct: float | None = None
    quality_drop_pct: float | None = None

    def failures(self, change: CellChange) -> list[str]:
        out = []
        a, b = change.base, change.other
        slower = change.ratio if change.change == "slower" and change.ratio is not None else 1.0
        if self.slower_pct is not None and slower > 1 + self.slower_pct / 100:
            out.append(f"{100 * (slower - 1):.1f}% slower (> {self.slower_pct:g}%, {change.test_text})")
        gated = self.slower_pct is not None or self.quality_drop_pct is not None
        if self.quality_drop_pct is not None and a and b:
            for what, old, new in (("macro-F1", a.macro_f1, b.macro_f1), ("agreement", a.agreement, b.agreement)):
                if old and new is not None and new < old * (1 - self.quality_drop_pct / 100):
                    out.append(f"{what} {old:.4f} -> {new:.4f} ({100 * (new / old - 1):.2f}%)")
        if gated and a and a.p50_ms and (b is None or not b.p50_ms):
            out.append(
                "measured in the base run, missing from the other"
                if b is None
                else f"measured in the base run, {b.status} in the other: {b.reason}"
            )
        return out


def compare_cells(
    results: Sequence[Result],
    rows: Sequence[CellSummary],
    base: str,
    other: str,
    samples: SampleSource = None,
    *,
    relative: bool = False,
) -> list[CellChange]:
    """Every cell of run `base` or `other` (rows from `summarise(results)`), compared where both measured it.

    `relative`: compare each cell's time relative to its own run's FP32 eager baseline (same model,
    batch and sequence mode; the ratio its speed-up inverts), so a change of the host's speed between
    the runs cancels (quantmatrix.stats.relative_change); the baseline cells themselves are not compared.
    """
    by_run: dict[str, dict[CellKey, CellSummary]] = {base: {}, other: {}}
    for r in rows:
        if r.run_id in by_run and r.overhead is None:  # the null runner's microseconds are noise to compare
            by_run[r.run_id][(r.model, r.variant, r.runner, r.batch_size, r.seq_mode)] = r
    for run, cells in by_run.items():
        if not any(c.p50_ms for c in cells.values()):
            known = sorted({r.run_id for r in rows})
            raise QuantmatrixError(f"run {run!r} has no measured cells (runs with results: {known})")
    out = []
    for key in sorted(set(by_run[base]) | set(by_run[other]), key=str):
        a, b = by_run[base].get(key), by_run[other].get(key)
        if a is None or b is None or not a.p50_ms or not b.p50_ms:
            missing = "base" if a is None or not a.p50_ms else "other"
            out.append(CellChange(key, a, b, note=f"not measured in the {missing} run"))
            continue
        if a.threads != b.threads:
            out.append(CellChange(key, a, b, note=f"threads differ ({a.threads} vs {b.threads})"))
            continue
        sa, sb = cell_slices(results, a.members, samples), cell_slices(results, b.members, samples)
        if not relative:
            interval = ratio_ci(sb, sa)
            # Paired (side by side): the interval's own estimate, the median over turn groups of each
            # group's ratio; otherwise the ratio of the two runs' p50s, which the unpaired CI is about.
            ratio = interval.value if interval is not None and interval.paired else b.p50_ms / a.p50_ms
            out.append(CellChange(key, a, b, ratio, interval, change_test(sa, sb)))
            continue
        if a.fp32_baseline or b.fp32_baseline:
            out.append(CellChange(key, a, b, note="the baseline of the relative comparison"))
            continue
        if not a.baseline_members or not b.baseline_members:
            out.append(CellChange(key, a, b, note="no FP32 eager baseline of this setting in both runs"))
            continue
        found = relative_change(
            sa, cell_slices(results, a.baseline_members, samples), sb, cell_slices(results, b.baseline_members, samples)
        )
        if found is None:
            out.append(CellChange(key, a, b, note="too few raw samples for a relative comparison"))
            continue
        interval, test = found
        out.append(CellChange(key, a, b, interval.value, interval, test))
    return out


def render(
    changes: Sequence[CellChange], base: str, other: str, gate: Gate, *, markdown: bool = False, relative: bool = False
) -> list[str]:
    """The comparison as lines: a fixed-width table for terminals, or a Markdown table for a job summary."""
    cols = ["cell", f"{base[:12]} p50 ms", f"{other[:12]} p50 ms", "ratio [95% CI]", "change", "test",
            "ΔF1", "Δagree", "gate"]  # fmt: skip
    rows = []
    for c in changes:
        failures = gate.failures(c)
        gate_text = "FAIL: " + "; ".join(failures) if failures else "ok"
        if c.note:
            rows.append([c.name, _ms(c.base), _ms(c.other), "-", c.change, c.note,
                         _delta(c.f1_delta), _delta(c.agreement_delta), gate_text])  # fmt: skip
            continue
        ratio = f"{c.ratio:.3f}" if c.ratio is not None else "-"
        if c.interval:
            ratio += f" [{c.interval.low:.3f}, {c.interval.high:.3f}]"
        rows.append([c.name, _ms(c.base), _ms(c.other), ratio, c.change, c.test_text,
                     _delta(c.f1_delta), _delta(c.agreement_delta), gate_text])  # fmt: skip
    if markdown:
        lines = [f"### {other} vs {base}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in rows]
        lines.append("")
    else:
        widths = [max(len(cols[i]), *(len(r[i]) for r in rows)) if rows else len(cols[i]) for i in range(len(cols))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    tested = [c for c in changes if c.test is not None]
    slower = sum(c.change == "slower" for c in changes)
    faster = sum(c.change == "faster" for c in changes)
    quality = sum(bool(c.f1_delta or c.agreement_delta) for c in changes)
    if relative:
        lines.append(
            f"ratio: ({other} p50 / its FP32 eager p50) / ({base} p50 / its FP32 eager p50), each measured side by "
            f"side within its run (above 1: slower relative to the baseline); 95% bootstrap CI; change: the "
            f"bootstrap's two-sided test at {ALPHA:.0%}"
        )
    else:
        lines.append(
            f"ratio: {other} p50 / {base} p50 (above 1: slower), 95% bootstrap CI over slices; change: two-sided "
            f"test at {ALPHA:.0%} (Mann-Whitney U on slice medians, or Wilcoxon signed-rank on paired rounds)"
        )
    lines.append(
        f"{len(tested)} cells tested: {slower} significantly slower, {faster} significantly faster; "
        f"{quality} with a quality change (exact: same examples)"
    )
    return lines


def _ms(row: CellSummary | None) -> str:
    return f"{row.p50_ms:.3f}" if row and row.p50_ms else ("-" if row is None else row.status)


def _delta(d: float | None) -> str:
    return "-" if d is None else ("0" if d == 0 else f"{d:+.4f}")
