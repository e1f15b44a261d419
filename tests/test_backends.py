"""Adding a backend is one new file: a module dropped into `runners/backends/` registers itself and runs.

The new backend here lives in a temporary directory added to the `runners.backends` package path, so
no file of the project changes; it goes through discovery, the matrix, the planner, a real run job on
the tiny model, the summary and the report exactly as a backend file in the repository would.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

import builders
import runners
import runners.backends
from bench import plan
from quantmatrix.capabilities import Capability
from quantmatrix.records import Result, read_record
from quantmatrix.spec import load_matrix
from quantmatrix.summary import load_results, summarise
from runners.job import RunJob

pytestmark = pytest.mark.slow

# The whole new backend: a params dataclass, a session, a registered `load` with its capabilities.
ONES_BACKEND = '''
"""A second harness-overhead backend: ones instead of zeros, and nothing else."""

from dataclasses import dataclass

import numpy as np

from quantmatrix.capabilities import Capability
from runners import LoadRequest, runner


@dataclass(frozen=True)
class OnesParams:
    """No options."""


class OnesSession:
    def __init__(self, names, num_labels):
        self.input_names = names
        self._num_labels = num_labels

    def predict(self, inputs):
        return np.ones((len(next(iter(inputs.values()))), self._num_labels), dtype=np.float32)

    def options(self):
        return {"made_by": "test_backends"}


@runner("ones", params=OnesParams, formats=("torch", "onnx"), capabilities={Capability.MEASURES_OVERHEAD})
def load(request: LoadRequest) -> OnesSession:
    return OnesSession(tuple(t.name for t in request.manifest.io_inputs), len(request.manifest.id2label))
'''

EXTRA_RUNNER = """
[runners.ones]
backend = "ones"
"""


@pytest.fixture
def ones_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    extra = tmp_path / "more-backends"
    extra.mkdir()
    (extra / "ones.py").write_text(ONES_BACKEND)
    monkeypatch.setattr(runners.backends, "__path__", [*runners.backends.__path__, str(extra)])
    yield
    sys.modules.pop("runners.backends.ones", None)


def test_a_new_backend_file_is_discovered_with_its_capabilities(ones_backend):
    info = runners.registry()["ones"]
    assert info.capabilities == {Capability.MEASURES_OVERHEAD} and info.formats == ("torch", "onnx")
    assert info.load_lm is None and not info.can(Capability.SCORES_QUALITY)


def test_a_backend_leaves_the_registry_with_its_file(ones_backend, monkeypatch):
    assert "ones" in runners.registry()
    monkeypatch.undo()
    assert "ones" not in runners.registry() and "null" in runners.registry()


def test_a_new_backend_runs_end_to_end_and_is_classified_by_capability(ones_backend, built, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(built, work)
    body = (work / "matrix.toml").read_text()
    body = body.replace('runners = ["torch-eager", "ort-cpu", "null"]', 'runners = ["torch-eager", "ort-cpu", "ones"]')
    (work / "matrix.toml").write_text(body + EXTRA_RUNNER)
    matrix = load_matrix(work / "matrix.toml", builders=builders.registry(), backends=runners.registry())

    # Planned like the null runner: on the reference only (it measures overhead, it scores nothing).
    formats = {k: v.output_format for k, v in builders.registry().items()}
    p = plan(matrix, "t", "cpu", builder_formats=formats, backends=runners.registry(), run_id="r")
    assert {j.variant for j in p.jobs if j.kind == "run" and j.runner == "ones"} == {"reference"}

    for runner in ("ones", "torch-eager"):
        RunJob(
            matrix, "t", "tiny", "reference", runner, artifacts=work / "artifacts", results=work / "results",
            run_id="r", log=lambda _: None,
        ).run()  # fmt: skip
    ones = [read_record(Result, f) for f in sorted((work / "results" / "r").glob("tiny__reference__ones__*"))]
    assert len(ones) == 4
    for r in ones:
        assert r.status == "ok", r.reason
        assert r.capabilities == [Capability.MEASURES_OVERHEAD] and r.runner_options["made_by"] == "test_backends"
        assert r.latency.p50 > 0 and r.verdict == "n/a" and r.quality is None and r.canary == []

    results, errors = load_results([work / "results"])
    assert not errors
    rows = summarise(results)
    for row in (r for r in rows if r.runner == "ones"):
        # Classified by its capability: a share of the real p50 of the same setting, never a speed-up.
        base = next(b for b in rows if b.runner == "torch-eager" and b.key == row.key)
        assert row.measures_overhead and not row.fp32_baseline and row.speedup is None
        assert row.overhead == pytest.approx(row.p50_ms / base.p50_ms)
    assert all(r.fp32_baseline and r.speedup == 1.0 for r in rows if r.runner == "torch-eager")
