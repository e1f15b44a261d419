"""The end-of-run summary table, read back from the result JSON files (never from logs)."""

from __future__ import annotations

from pathlib import Path

from quantmatrix.errors import RecordError
from quantmatrix.records import Result, read_record


def load_results(run_dir: Path) -> list[Result]:
    results = []
    for path in sorted(run_dir.glob("*.json")):
        try:
            results.append(read_record(Result, path))
        except RecordError:
            continue
    return results


def baseline_p50(results: list[Result], r: Result) -> float | None:
    """p50 of the FP32 reference on PyTorch eager for the same model, batch and sequence mode."""
    for b in results:
        c = b.cell
        if (
            (c.model, c.variant, c.backend, c.batch_size, c.seq_mode)
            == (r.cell.model, "reference", "torch", r.cell.batch_size, r.cell.seq_mode)
            and b.latency
            and not b.runner_options.get("compile")
        ):
            return b.latency.p50
    return None


def summarise(run_dir: Path) -> str:
    results = load_results(run_dir)
    if not results:
        return f"no results under {run_dir}"
    head = (
        f"{'model':10} {'variant':34} {'runner':16} {'b':>2} {'seq':7} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'speedup':>7} {'MB':>6} {'F1':>6} {'agree':>6}  verdict"
    )
    lines = [head, "-" * len(head)]
    for r in sorted(
        results, key=lambda r: (r.cell.model, r.cell.batch_size, r.cell.seq_mode, r.cell.variant, r.cell.runner)
    ):
        c = r.cell
        if r.latency is None:
            lines.append(
                f"{c.model:10} {c.variant:34} {c.runner:16} {c.batch_size:>2} {c.seq_mode:7} "
                f"{'-':>8} {'-':>8} {'-':>7} {'-':>6} {'-':>6} {'-':>6}  {r.status}: {r.reason}"
            )
            continue
        base = baseline_p50(results, r)
        speed = f"{base / r.latency.p50:.2f}x" if base else "-"
        f1 = f"{r.quality.macro_f1:.4f}" if r.quality else "-"
        agree = f"{r.agreement.top1:.4f}" if r.agreement else "-"
        mb = f"{(r.artifact_bytes or 0) / 2**20:.1f}"
        lines.append(
            f"{c.model:10} {c.variant:34} {c.runner:16} {c.batch_size:>2} {c.seq_mode:7} "
            f"{r.latency.p50:8.2f} {r.latency.p99:8.2f} {speed:>7} {mb:>6} {f1:>6} {agree:>6}  {r.verdict}"
        )
    return "\n".join(lines)
