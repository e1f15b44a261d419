"""Dataset loading: the bundled corpus, local files, a Hugging Face layout, and bad data."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from quantmatrix.data import HEADLINES9_LABELS, SPLITS, load_dataset
from quantmatrix.errors import DataError
from quantmatrix.spec import DatasetSpec

LABELS = ("pos", "neg", "neutral")


def _rows(n: int = 60) -> list[dict[str, str]]:
    return [{"sentence": f"example sentence number {i}", "sentiment": LABELS[i % 3]} for i in range(n)]


def _spec(source: str, **kw) -> DatasetSpec:
    return DatasetSpec(name="d", source=source, **kw)


def test_bundled_headlines9_has_fixed_splits_labels_and_canary():
    data = load_dataset(_spec("bundled:headlines9"))
    assert data.labels == HEADLINES9_LABELS
    assert {k: len(v) for k, v in data.splits.items()} == {
        "train": 2200,
        "validation": 400,
        "test": 800,
        "calibration": 200,
    }
    assert sum(len(v) for v in data.splits.values()) >= 3000
    texts = [e.text for s in SPLITS for e in data.split(s)]
    assert len(set(texts)) == len(texts), "a headline appears in two splits"
    canary = {c.text: c.expected for c in data.canary}
    assert 10 <= len(canary) <= 16
    # The three prompts from the users' lab notebooks, with the label a correct model gives.
    assert canary["Cybersecurity breach exposes NHS patient records"] == "security"
    assert canary["AI tutor program set to roll out in Scottish schools"] == "education"
    assert canary["Climate report warns UK cities face extreme flooding by 2030"] == "climate"
    assert not set(canary) & set(texts)
    assert data.fingerprint == load_dataset(_spec("bundled:headlines9")).fingerprint


def test_bundled_corpus_is_what_the_committed_generator_writes(repo):
    result = subprocess.run(
        [sys.executable, str(repo / "scripts" / "make_headlines9.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_bundled_corpus_is_hard_shared_vocabulary_and_noise():
    data = load_dataset(_spec("bundled:headlines9"))
    by_label: dict[int, list[str]] = {}
    for e in data.split("train"):
        by_label.setdefault(e.label, []).append(e.text.lower())
    # Distractor vocabulary: words of one domain appear under other labels too.
    for word in ("nhs", "ai", "school"):
        labels_with_word = {lab for lab, texts in by_label.items() if any(word in t.split() for t in texts)}
        assert len(labels_with_word) >= 3, f"{word!r} only under {labels_with_word}"


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_local_files_load_with_configured_columns_and_seeded_splits(tmp_path: Path, suffix: str):
    path = tmp_path / f"data{suffix}"
    rows = _rows()
    if suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["sentence", "sentiment"])
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    spec = _spec(f"file:{path.name}", text_column="sentence", label_column="sentiment")
    data = load_dataset(spec, base_dir=tmp_path)
    assert data.labels == ("neg", "neutral", "pos")  # inferred, sorted
    assert set(data.splits) == set(SPLITS)
    assert sum(len(v) for v in data.splits.values()) == 60
    again = load_dataset(spec, base_dir=tmp_path)
    assert again.splits == data.splits and again.fingerprint == data.fingerprint
    other_seed = load_dataset(DatasetSpec(**{**spec.__dict__, "seed": 99}), base_dir=tmp_path)
    assert other_seed.split("test") != data.split("test")


def test_hf_dataset_in_hub_layout_with_class_labels(tmp_path: Path):
    """The `hf:` path on a tiny ag_news-shaped fixture saved as the hub stores it (parquet shards)."""
    import datasets

    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["World", "Sports", "Business", "Sci/Tech"]),
        }
    )
    for split, n in (("train", 80), ("test", 20)):
        ds = datasets.Dataset.from_dict(
            {"text": [f"{split} headline {i}" for i in range(n)], "label": [i % 4 for i in range(n)]}, features=features
        )
        (tmp_path / "ag_news" / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(tmp_path / "ag_news" / "data" / f"{split}-00000-of-00001.parquet")
    data = load_dataset(_spec("hf:ag_news"), base_dir=tmp_path)
    assert data.labels == ("World", "Sports", "Business", "Sci/Tech")
    assert len(data.split("test")) == 20  # the dataset's own test split is kept
    assert {e.text.split()[0] for e in data.split("validation")} == {"train"}  # carved from train
    assert len(data.split("train")) + len(data.split("validation")) + len(data.split("calibration")) == 80
    assert data.split("test")[1].label == 1


def test_hf_dataset_saved_to_disk(tmp_path: Path):
    import datasets

    ds = datasets.Dataset.from_dict({"text": [f"t {i}" for i in range(40)], "label": ["a", "b"] * 20})
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "saved"))
    data = load_dataset(_spec(f"hf:{tmp_path / 'saved'}"))
    assert data.labels == ("a", "b")


def test_hf_hub_id_offline_gives_a_clear_error():
    with pytest.raises(DataError, match=r"dataset d: cannot load hub id 'no-such/dataset-xyz'.*offline"):
        load_dataset(_spec("hf:no-such/dataset-xyz"))


def _error(tmp_path: Path, name: str, content: bytes, **kw) -> str:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError) as e:
        load_dataset(_spec(f"file:{name}", **kw), base_dir=tmp_path)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_bad_data_gives_one_line_errors_naming_the_file_and_row(tmp_path: Path):
    assert "missing.csv: no such file" in _error_missing(tmp_path)
    assert "empty.csv: the file is empty" in _error(tmp_path, "empty.csv", b"")
    assert "header.csv: the file is empty (no rows)" in _error(tmp_path, "header.csv", b"text,label\n")
    msg = _error(tmp_path, "cols.csv", b"headline,label\nhello,a\n")
    assert "cols.csv: no column 'text' (columns: headline, label)" in msg
    msg = _error(tmp_path, "latin1.csv", "text,label\nok,a\ncaf\u00e9,b\n".encode("latin-1"))
    assert "latin1.csv: line 3: not valid UTF-8" in msg
    msg = _error(tmp_path, "unknown.csv", b"text,label\nx,a\ny,zzz\n", labels=("a", "b"))
    assert "unknown.csv: row 2: unknown label 'zzz' (labels: a, b)" in msg
    msg = _error(tmp_path, "blank.jsonl", b'{"text": "x", "label": "a"}\n{"text": "", "label": "a"}\n')
    assert "blank.jsonl: row 2: column 'text' is empty" in msg
    msg = _error(tmp_path, "broken.jsonl", b'{"text": "x", "label": "a"}\n{"text": \n')
    assert "broken.jsonl: line 2: invalid JSON" in msg
    assert "too few" in _error(tmp_path, "few.csv", b"text,label\nx,a\ny,b\n")
    assert "unsupported file type '.xlsx'" in _error(tmp_path, "d.xlsx", b"PK")
    msg = _error(tmp_path, "split.csv", b"text,label,part\nx,a,train\ny,b,holdout\n", split_column="part")
    assert "row 2: unknown split 'holdout'" in msg


def _error_missing(tmp_path: Path) -> str:
    with pytest.raises(DataError) as e:
        load_dataset(_spec("file:missing.csv"), base_dir=tmp_path)
    return str(e.value)


def test_tampered_bundled_corpus_fails_its_checksum(tmp_path: Path, monkeypatch):
    import quantmatrix.data as data_module

    for name in ("headlines9.jsonl", "headlines9.sha256", "headlines9_canary.jsonl"):
        (tmp_path / name).write_bytes((data_module.BUNDLED_DIR / name).read_bytes())
    with (tmp_path / "headlines9.jsonl").open("a") as f:
        f.write('{"text": "injected", "label": "World", "split": "train"}\n')
    monkeypatch.setattr(data_module, "BUNDLED_DIR", tmp_path)
    with pytest.raises(DataError, match=r"checksum .* does not match headlines9\.sha256"):
        load_dataset(_spec("bundled:headlines9"))
