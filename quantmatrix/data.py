"""Labelled text for fine-tuning, calibration and scoring: one shape whatever the source.

Three sources, named by the dataset's `source` in matrix.toml:

- `bundled:headlines9`: the committed corpus (quantmatrix/datasets/), checksum-verified.
- `file:<path>`: a local CSV, JSONL or Parquet file with a text and a label column.
- `hf:<id or directory>`: a Hugging Face `datasets` dataset by hub id (needs the hub) or a local
  directory in the hub's layout (`data/<split>-*.parquet`, csv or json) or `save_to_disk` output.

Every source ends as a `LabelledData` with the four fixed splits (train, validation, test,
calibration); a source that lacks some of them has them carved out of its train split with a
seeded shuffle, so the same file always gives the same splits. Bad data raises `DataError` naming
the file, the row and the column at fault.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantmatrix.errors import DataError
from quantmatrix.spec import DatasetSpec

SPLITS = ("train", "validation", "test", "calibration")
# Shares used when a source has no split of its own (test and calibration are carved first).
CARVE = {"validation": 0.10, "test": 0.15, "calibration": 0.05}
MAX_CALIBRATION = 500
SPLIT_ALIASES = {"valid": "validation", "dev": "validation", "val": "validation", "calib": "calibration"}

BUNDLED_DIR = Path(__file__).parent / "datasets"
HEADLINES9_LABELS = (
    "World",
    "Sports",
    "Business",
    "Sci/Tech",
    "education",
    "health",
    "climate",
    "security",
    "tech-policy",
)
BUNDLED_LABELS = {"headlines9": HEADLINES9_LABELS}


@dataclass(frozen=True)
class Example:
    text: str
    label: int  # index into LabelledData.labels


@dataclass(frozen=True)
class CanaryPrompt:
    """A hand-picked ambiguous input and the label a good classifier should give it."""

    text: str
    expected: str


@dataclass(frozen=True)
class LabelledData:
    name: str
    labels: tuple[str, ...]
    splits: dict[str, tuple[Example, ...]]
    canary: tuple[CanaryPrompt, ...] = ()
    fingerprint: str = field(default="")

    def split(self, name: str) -> tuple[Example, ...]:
        if name not in self.splits:
            raise DataError(f"dataset {self.name}: no split {name!r} (has {', '.join(self.splits)})")
        return self.splits[name]

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    def summary(self) -> str:
        sizes = ", ".join(f"{k} {len(v)}" for k, v in self.splits.items())
        return f"{self.name}: {len(self.labels)} labels; {sizes}; {len(self.canary)} canary prompts"


def load_dataset(spec: DatasetSpec, base_dir: Path | str = ".") -> LabelledData:
    """Load the dataset `spec` names; relative file paths are resolved against `base_dir`."""
    kind = spec.kind
    if kind == "bundled":
        return _bundled(spec)
    if kind == "file":
        path = Path(spec.location)
        path = path if path.is_absolute() else Path(base_dir) / path
        rows = read_table(path)
        return _from_rows(spec, rows, where=str(path))
    if kind == "hf":
        return _huggingface(spec, base_dir)
    raise DataError(f"dataset {spec.name}: unknown source kind {kind!r} (expected bundled:, file: or hf:)")


# --- bundled -----------------------------------------------------------------------------------


def _bundled(spec: DatasetSpec) -> LabelledData:
    name = spec.location
    path = BUNDLED_DIR / f"{name}.jsonl"
    if name not in BUNDLED_LABELS or not path.is_file():
        raise DataError(f"dataset {spec.name}: no bundled dataset {name!r} (have {', '.join(BUNDLED_LABELS)})")
    raw = path.read_bytes()
    expected = (BUNDLED_DIR / f"{name}.sha256").read_text().split()[0]
    actual = hashlib.sha256(raw).hexdigest()
    if actual != expected:
        raise DataError(
            f"{path}: checksum {actual[:12]}… does not match {name}.sha256 ({expected[:12]}…); "
            "regenerate with python scripts/make_headlines9.py"
        )
    labelled = _with(spec, labels=spec.labels or BUNDLED_LABELS[name], split_column=spec.split_column or "split")
    data = _from_rows(labelled, read_jsonl(raw, path), where=str(path))
    canary_path = BUNDLED_DIR / f"{name}_canary.jsonl"
    canary = (
        tuple(
            CanaryPrompt(text=_cell(row, "text", canary_path, i), expected=_cell(row, "label", canary_path, i))
            for i, row in enumerate(read_jsonl(canary_path.read_bytes(), canary_path), start=1)
        )
        if canary_path.is_file()
        else ()
    )
    for i, prompt in enumerate(canary, start=1):
        if prompt.expected not in data.labels:
            raise DataError(f"{canary_path}: row {i}: unknown label {prompt.expected!r}")
    return LabelledData(data.name, data.labels, data.splits, canary, data.fingerprint)


def _with(spec: DatasetSpec, **changes: Any) -> DatasetSpec:
    from dataclasses import replace

    return replace(spec, **changes)


# --- files -------------------------------------------------------------------------------------


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV, JSONL/JSON or Parquet file, as dicts; clear errors for unreadable files."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        except ImportError as e:
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from e
        except Exception as e:  # pyarrow raises its own error types for corrupt files
            raise DataError(f"{path}: not a readable Parquet file: {e}") from e
    elif suffix in (".jsonl", ".json", ".ndjson"):
        rows = read_jsonl(path.read_bytes(), path)
    elif suffix in (".csv", ".tsv"):
        rows = read_csv(path.read_bytes(), path, delimiter="\t" if suffix == ".tsv" else ",")
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r} (expected .csv, .tsv, .jsonl, .json or .parquet)")
    if not rows:
        raise DataError(f"{path}: the file is empty (no rows)")
    return rows


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line}: not valid UTF-8 (byte {raw[e.start]:#04x} at offset {e.start}); "
            "re-save the file as UTF-8"
        ) from None


def read_jsonl(raw: bytes, path: Path) -> list[dict[str, Any]]:
    text = _decode(raw, path)
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {e.lineno}: invalid JSON: {e.msg}") from None
        if not all(isinstance(r, dict) for r in rows):
            raise DataError(f"{path}: expected a JSON array of objects")
        return rows
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {n}: invalid JSON: {e.msg}") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {n}: expected a JSON object, got {type(row).__name__}")
        out.append(row)
    return out


def read_csv(raw: bytes, path: Path, delimiter: str = ",") -> list[dict[str, Any]]:
    text = _decode(raw, path)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        rows = list(reader)
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num}: bad CSV: {e}") from None
    if reader.fieldnames is None:
        raise DataError(f"{path}: the file is empty (no header row)")
    for n, row in enumerate(rows, start=2):
        if None in row:
            raise DataError(f"{path}: line {n}: more fields than the header has")
    return rows


# --- Hugging Face ------------------------------------------------------------------------------


def _huggingface(spec: DatasetSpec, base_dir: Path | str) -> LabelledData:
    location = spec.location
    local = Path(location) if Path(location).is_absolute() else Path(base_dir) / location
    try:
        import datasets
    except ImportError as e:
        raise DataError(f"dataset {spec.name}: hf: sources need the `datasets` package") from e
    datasets.utils.logging.disable_progress_bar()
    try:
        if local.is_dir() and (local / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(local))
        elif local.is_dir():
            loaded = datasets.load_dataset(str(local))
        else:
            loaded = datasets.load_dataset(location)
    except Exception as e:  # hub errors, offline mode, missing files: all one message
        where = str(local) if local.is_dir() else f"hub id {location!r}"
        raise DataError(
            f"dataset {spec.name}: cannot load {where}: {type(e).__name__}: {str(e).splitlines()[0]}"
            ' (offline? copy it locally and use source = "hf:/path/to/dir")'
        ) from None
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({"train": loaded})
    labels = spec.labels
    if not labels:
        feature = next(iter(loaded.values())).features.get(spec.label_column)
        if isinstance(feature, datasets.ClassLabel):
            labels = tuple(feature.names)
    rows: list[dict[str, Any]] = []
    split_column = "__split__"
    for split_name, ds in loaded.items():
        for col in (spec.text_column, spec.label_column):
            if col not in ds.column_names:
                raise DataError(
                    f"dataset {spec.name}: split {split_name} has no column {col!r} "
                    f"(columns: {', '.join(ds.column_names)}); set text_column/label_column"
                )
        split = SPLIT_ALIASES.get(split_name, split_name)
        for row in ds.select_columns([spec.text_column, spec.label_column]):
            row[split_column] = split
            rows.append(row)
    return _from_rows(_with(spec, labels=labels, split_column=split_column), rows, where=f"dataset {spec.name}")


# --- shared ------------------------------------------------------------------------------------


def _cell(row: dict[str, Any], column: str, where: Path | str, n: int) -> Any:
    if column not in row:
        raise DataError(
            f"{where}: row {n}: no column {column!r} (columns: {', '.join(map(str, row))}); "
            "set text_column/label_column in matrix.toml"
        )
    return row[column]


def _label_index(value: Any, labels: Sequence[str], index: dict[str, int], where: str, n: int) -> int:
    key = str(value).strip() if value is not None else ""
    if key in index:
        return index[key]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(labels):
        return value  # integer class ids (as in ag_news) index the label list
    if key.isdigit() and int(key) < len(labels) and not any(lab.isdigit() for lab in labels):
        return int(key)
    shown = ", ".join(labels[:12]) + (" …" if len(labels) > 12 else "")
    raise DataError(f"{where}: row {n}: unknown label {value!r} (labels: {shown})")


def _from_rows(spec: DatasetSpec, rows: Sequence[dict[str, Any]], where: str) -> LabelledData:
    if not rows:
        raise DataError(f"{where}: no rows")
    for column in (spec.text_column, spec.label_column):
        if column not in rows[0]:
            raise DataError(
                f"{where}: no column {column!r} (columns: {', '.join(map(str, rows[0]))}); "
                "set text_column/label_column in matrix.toml"
            )
    labels = tuple(spec.labels) or _infer_labels(rows, spec.label_column)
    index = {name: i for i, name in enumerate(labels)}
    by_split: dict[str, list[Example]] = {}
    unsplit: list[Example] = []
    for n, row in enumerate(rows, start=1):
        text = _cell(row, spec.text_column, where, n)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: row {n}: column {spec.text_column!r} is empty or not text")
        example = Example(text.strip(), _label_index(_cell(row, spec.label_column, where, n), labels, index, where, n))
        if spec.split_column:
            split = str(_cell(row, spec.split_column, where, n)).strip()
            split = SPLIT_ALIASES.get(split, split)
            if split not in SPLITS:
                raise DataError(
                    f"{where}: row {n}: unknown split {split!r} in column {spec.split_column!r} "
                    f"(expected one of {', '.join(SPLITS)})"
                )
            by_split.setdefault(split, []).append(example)
        else:
            unsplit.append(example)
    if unsplit:
        by_split.setdefault("train", []).extend(unsplit)
    splits = _complete_splits(by_split, spec.seed, where)
    return LabelledData(spec.name, labels, splits, (), _fingerprint(labels, splits))


def _infer_labels(rows: Iterable[dict[str, Any]], column: str) -> tuple[str, ...]:
    values = {row.get(column) for row in rows}
    ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    if ints and len(ints) == len(values):
        return tuple(str(i) for i in range(max(ints) + 1))
    return tuple(sorted(str(v).strip() for v in values if v is not None and str(v).strip()))


def _complete_splits(by_split: dict[str, list[Example]], seed: int, where: str) -> dict[str, tuple[Example, ...]]:
    """Carve the splits a source lacks out of its train split (seeded, so always the same)."""
    missing = [s for s in SPLITS if not by_split.get(s)]
    if missing:
        pool = list(by_split.get("train", []))
        if len(pool) < 20:
            raise DataError(
                f"{where}: {len(pool)} training examples are too few to carve "
                f"{', '.join(s for s in missing if s != 'train')} from (need at least 20)"
            )
        random.Random(seed).shuffle(pool)
        for split in ("test", "validation", "calibration"):
            if split in missing:
                size = max(1, round(CARVE[split] * len(pool)))
                if split == "calibration":
                    size = min(size, MAX_CALIBRATION)
                by_split[split], pool = pool[:size], pool[size:]
        by_split["train"] = pool
    return {s: tuple(by_split[s]) for s in SPLITS}


def _fingerprint(labels: Sequence[str], splits: dict[str, tuple[Example, ...]]) -> str:
    h = hashlib.sha256(json.dumps(list(labels)).encode())
    for name in SPLITS:
        for e in splits[name]:
            h.update(f"{name}\t{e.label}\t{e.text}\n".encode())
    return h.hexdigest()[:16]
