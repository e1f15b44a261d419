"""The reference builder end to end on the tiny random-init BERT: artefact, manifest, reuse, determinism."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from builders.__main__ import main as builders_main
from quantmatrix.records import Manifest, read_record

pytestmark = pytest.mark.slow

TINY = """
[datasets.headlines9]
source = "bundled:headlines9"

[models.tiny]
source = "random:bert-tiny"
dataset = "headlines9"
max_length = 32

[models.tiny.finetune]
method = "full"
epochs = 1
learning_rate = 1e-3
max_train_examples = 256

[profiles.smoke]
models = ["tiny"]
variants = []
runners = []
"""


def _build(tmp_path, capsys, *extra: str) -> str:
    (tmp_path / "matrix.toml").write_text(TINY)
    rc = builders_main(
        [
            "reference",
            "--model",
            "tiny",
            "--matrix",
            str(tmp_path / "matrix.toml"),
            "--artifacts",
            str(tmp_path / "artifacts"),
            *extra,
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    return out


def test_reference_artifact_manifest_and_reuse(tmp_path, capsys):
    out = _build(tmp_path, capsys)
    assert "test macro-F1 " in out
    (art,) = [p for p in (tmp_path / "artifacts").iterdir() if not p.name.startswith(".")]
    manifest = read_record(Manifest, art / "manifest.json")
    assert manifest.status == "ok" and manifest.builder == "reference" and manifest.random_init
    assert manifest.id2label["7"] == "security" and len(manifest.id2label) == 9
    assert "input_ids" in [t.name for t in manifest.io_inputs]
    assert manifest.io_outputs[0].name == "logits" and manifest.io_outputs[0].shape == ["batch", 9]
    assert 0.0 <= manifest.metrics["test_macro_f1"] <= 1.0 and manifest.build_seconds > 0
    files = {f.path for f in manifest.files}
    assert {"model/model.safetensors", "tokenizer/tokenizer.json", "eval/test_logits.npy"} <= files
    assert not list(art.rglob("*.bin")) and not list(art.rglob("*.pt")), "weights must be safetensors"
    assert np.load(art / "eval" / "test_logits.npy", allow_pickle=False).shape == (800, 9)
    assert np.load(art / "eval" / "canary_logits.npy", allow_pickle=False).shape == (12, 9)

    # An existing complete artefact is reused, not rebuilt.
    created = json.loads((art / "manifest.json").read_text())["created"]
    _build(tmp_path, capsys)
    assert json.loads((art / "manifest.json").read_text())["created"] == created

    # A partial artefact (files without a manifest: a crash mid-write) is detected and rebuilt.
    logits = np.load(art / "eval" / "test_logits.npy", allow_pickle=False)
    (art / "manifest.json").unlink()
    _build(tmp_path, capsys)
    assert (art / "manifest.json").is_file()
    # Deterministic with a fixed seed: the rebuilt model predicts the same.
    np.testing.assert_allclose(np.load(art / "eval" / "test_logits.npy", allow_pickle=False), logits, atol=1e-4)


def test_reference_rebuilds_when_a_file_is_corrupted(tmp_path, capsys):
    _build(tmp_path, capsys)
    (art,) = [p for p in (tmp_path / "artifacts").iterdir() if not p.name.startswith(".")]
    weights = art / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16])
    capsys.readouterr()
    _build(tmp_path, capsys)
    assert read_record(Manifest, art / "manifest.json").status == "ok"
    shutil.rmtree(tmp_path / "artifacts")
