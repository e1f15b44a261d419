"""Shared test fixtures: repository paths and small matrix files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Tests never reach a model hub; loading code is exercised on what ships offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def stable_code_versions():
    """Artefact keys hash the builders' source files; hash each once per session, so a source file edited
    while a long test session runs (a shared working tree) cannot move keys between a build and its use."""
    import functools

    import quantmatrix.plan

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quantmatrix.plan, "_code_version", functools.cache(quantmatrix.plan._code_version))
        yield


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def write_matrix(tmp_path: Path):
    """Write a matrix.toml with the given body into tmp_path and return its path."""

    def write(body: str, name: str = "matrix.toml") -> Path:
        path = tmp_path / name
        path.write_text(body, encoding="utf-8")
        return path

    return write


# A tiny matrix (random 2-layer BERT, bundled headlines) whose artefacts build in seconds; shared by
# the run tests and the report tests.
TINY_MATRIX = """
[datasets.headlines9]
source = "bundled:headlines9"

[models.tiny]
source = "random:bert-tiny"
dataset = "headlines9"
max_length = 32

[models.tiny.finetune]
method = "full"
epochs = 2
learning_rate = 3e-3

[runners.torch-eager]
backend = "torch"

[runners.ort-cpu]
backend = "onnxruntime"
params = { threads = 1, force_spinning_stop = true }

[runners.null]
backend = "null"

[variants.onnx-fp32]
builder = "onnx-fp32"

[variants.ort-int8-dynamic]
from = "onnx-fp32"
builder = "ort-int8-dynamic"

[variants.torch-int8-dynamic]
builder = "torch-int8-dynamic"

[variants.torch-int8-dynamic-torchao]
builder = "torch-int8-dynamic"
params = { engine = "torchao" }

[profiles.t]
models = ["tiny"]
variants = ["onnx-fp32", "ort-int8-dynamic"]
runners = ["torch-eager", "ort-cpu", "null"]

[profiles.t.measure]
batch_sizes = [1, 4]
seq_modes = ["padded", "natural"]
padded_length = 32
warmup = 1
min_iterations = 3
min_seconds = 0.02
eval_examples = 200
"""


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Path:
    """A directory with TINY_MATRIX as matrix.toml and its reference and variants built under artifacts/."""
    import builders
    import runners
    from quantmatrix.spec import load_matrix
    from quantmatrix.store import Store

    root = tmp_path_factory.mktemp("built")
    (root / "matrix.toml").write_text(TINY_MATRIX)
    matrix = load_matrix(root / "matrix.toml", builders=builders.registry(), backends=runners.registry())
    variants = ("onnx-fp32", "ort-int8-dynamic", "torch-int8-dynamic", "torch-int8-dynamic-torchao")
    builders.build_with_deps(matrix, "tiny", variants, Store(root / "artifacts"))
    return root
