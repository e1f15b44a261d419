"""Loading and the typed table: every result file validated, grouped into cells, no presentation.

An invalid file becomes one line in `Loaded.invalid` (shown on the site and logged), never an error.
Latency samples leave the records after validation (a null-runner file can hold millions) and are kept
as compact arrays in `Loaded.samples`, from which the table's confidence intervals are computed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import ValidationError

from quantmatrix.errors import RecordError
from quantmatrix.records import AnalysisRecord, Fingerprint, Result, read_analysis, read_record
from quantmatrix.summary import CellSummary, result_files, summarise


@dataclass
class Source:
    """Where one valid result came from, and what the raw copy needs to say about it."""

    path: Path
    bytes: int
    samples: int
    sha256: str
    link: str = ""  # site-relative path of the raw copy, set when the site is written


@dataclass
class Loaded:
    """Every result file found: the valid ones with their sources, and the invalid ones with why."""

    results: list[Result] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    invalid: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    # Analysis records (`<run>/analyses/<name>.json`, any kind) with their files; links set when the site is written.
    analyses: list[tuple[AnalysisRecord, Path]] = field(default_factory=list)
    analysis_links: dict[Path, str] = field(default_factory=dict)
    # Raw latency samples of results[i] (float32 is ample for ms and halves the memory), None without latency.
    samples: list[np.ndarray | None] = field(default_factory=list)

    def machines(self) -> dict[str, Fingerprint]:
        """machine_id -> the fingerprint of its latest result, in order of first appearance."""
        out: dict[str, Fingerprint] = {}
        latest: dict[str, str] = {}
        for r in self.results:
            mid = r.fingerprint.machine_id
            if mid not in out or r.finished > latest[mid]:
                out[mid], latest[mid] = r.fingerprint, r.finished
        return out


def _read(path: Path) -> tuple[Result, bytes]:
    raw = path.read_bytes()
    try:
        return Result.model_validate_json(raw), raw
    except ValidationError:
        # The slower path words the error the way every other quantmatrix tool does (or accepts the file).
        return read_record(Result, path), raw


def load(dirs: Iterable[Path]) -> Loaded:
    loaded = Loaded()
    for root in dirs:
        if not root.exists():
            loaded.invalid.append((str(root), "no such file or directory"))
            continue
        files = sorted(result_files(root)) if root.is_dir() else [root]
        for path in sorted(p for p in root.rglob("*.json") if p.parent.name == "analyses") if root.is_dir() else []:
            try:
                loaded.analyses.append((read_analysis(path), path))
            except RecordError as e:
                loaded.invalid.append((str(path), str(e).removeprefix(f"{path}: ")))
        for path in files:
            try:
                result, raw = _read(path)
            except RecordError as e:
                loaded.invalid.append((str(path), str(e).removeprefix(f"{path}: ")))
                continue
            except OSError as e:
                loaded.invalid.append((str(path), f"cannot read: {e.strerror or e}"))
                continue
            samples = 0
            kept = None
            if result.latency is not None:
                samples = len(result.latency.samples)
                kept = np.asarray(result.latency.samples, dtype=np.float32)
                result.latency.samples = []
            loaded.samples.append(kept)
            loaded.results.append(result)
            loaded.sources.append(Source(path, len(raw), samples, hashlib.sha256(raw).hexdigest()))
    return loaded


COLUMNS = [*CellSummary.__dataclass_fields__, "config", "label", "machine_name", "runtime"]


def machine_name(fp: Fingerprint) -> str:
    gpu = f" + {fp.gpu_name}" if fp.gpu_name else ""
    return f"{fp.cpu_model} ({fp.cpu_cores_logical} threads){gpu}"


def build_table(loaded: Loaded, rows: list[CellSummary] | None = None) -> pd.DataFrame:
    """One row per (machine, model, variant, runner, batch, seq): every number the pages show.

    `members` holds indices into `loaded.results`/`loaded.sources` (every round of the cell).
    """
    records = []
    if rows is None:
        rows = summarise(loaded.results, loaded.samples if len(loaded.samples) == len(loaded.results) else None)
    for row in rows:
        fp = loaded.results[row.members[0]].fingerprint
        records.append(
            asdict(row)
            | {
                "config": f"batch {row.batch_size}, {row.seq_mode}",
                "label": f"{row.variant} @ {row.runner}",
                "machine_name": machine_name(fp),
                "runtime": fp.runtime,
            }
        )
    return pd.DataFrame.from_records(records, columns=COLUMNS)
