"""Results as a table: one row per cell and run, every scalar a user would filter on.

    >>> from quantmatrix.results import load
    >>> df = load(["results"])            # any number of result directories or files
    >>> df[df.verdict == "pass"].sort_values("p50_ms")[["variant", "runner", "p50_ms", "speedup"]]

Columns: the cell (model, variant, runner, backend, precision, device, batch_size, seq_mode), its
status/verdict, latency (p50_ms with its 95% CI p50_low/p50_high, p90_ms, p99_ms, spread over rounds),
speed-up against FP32 eager with its CI (speedup_low/high, speedup_slices, speedup_method), quality
(accuracy, macro_f1, agreement, mean_kl), size, memory, throughput, threads, the machine (machine, cpu_model,
gpu_name, runtime, ...) and the provenance (run_id, git_commit, git_commit_date, started). pandas is
imported only when a table is built, so the core stays light.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantmatrix.errors import QuantmatrixError
from quantmatrix.records import Result, atomic_write_text
from quantmatrix.summary import CellSummary, load_results, summarise

if TYPE_CHECKING:
    import pandas as pd

# Fingerprint fields copied onto every row (where the cell ran).
MACHINE_FIELDS = ("cpu_model", "cpu_cores_logical", "ram_bytes", "gpu_name", "gpu_driver", "cuda_version",
                  "runtime", "image", "os", "python", "git_dirty")  # fmt: skip
FORMATS = ("csv", "parquet")


def _row(row: CellSummary, first: Result) -> dict[str, Any]:
    out = {k: v for k, v in asdict(row).items() if k != "members"}  # indices into one load: meaningless later
    fp = first.fingerprint
    out |= {name: getattr(fp, name) for name in MACHINE_FIELDS}
    out["accuracy"] = first.quality.accuracy if first.quality else None
    out["mean_kl"] = first.agreement.mean_kl if first.agreement else None
    out["artifact_key"] = first.artifact_key
    return out


def frame(results: Sequence[Result], rows: Sequence[CellSummary]) -> pd.DataFrame:
    """The table of `rows` (from `summarise(results)`), one row each, columns as in the module docstring."""
    import pandas as pd

    records = []
    for row in rows:
        ok = [results[i] for i in row.members if results[i].status == "ok"]
        records.append(_row(row, ok[0] if ok else results[row.members[-1]]))
    columns = [f for f in CellSummary.__dataclass_fields__ if f != "members"]
    columns += [*MACHINE_FIELDS, "accuracy", "mean_kl", "artifact_key"]
    return pd.DataFrame.from_records(records, columns=columns)


def load(dirs: Iterable[Path | str]) -> pd.DataFrame:
    """Every valid result JSON under `dirs` as one row per cell and run (invalid files raise, naming them)."""
    results, errors = load_results([Path(d) for d in dirs])
    if errors:
        raise QuantmatrixError(f"{len(errors)} invalid result file(s): " + "; ".join(errors[:3]))
    return frame(results, summarise(results))


def write_table(table: pd.DataFrame, path: Path, fmt: str) -> None:
    """Write the table as CSV or Parquet atomically (readers never see half a file)."""
    if fmt == "csv":
        atomic_write_text(path, table.to_csv(index=False))
    elif fmt == "parquet":
        import io

        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        tmp = path.with_name(f".{path.name}.tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(path)
    else:
        raise QuantmatrixError(f"{path}: unknown table format {fmt!r}; expected one of {FORMATS}")
