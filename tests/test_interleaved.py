"""Interleaved timing end to end: real run jobs in their own processes take turns through the launcher."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest

import builders
import runners
from bench import TURNS_DIR, Launcher, execute, plan
from quantmatrix.records import Result, read_record
from quantmatrix.spec import load_matrix
from quantmatrix.stats import ratio_ci
from quantmatrix.store import Store
from quantmatrix.summary import cell_slices, load_results

pytestmark = pytest.mark.slow

SLICED = """
[profiles.t.measure]
batch_sizes = [1, 4]
seq_modes = ["padded"]
padded_length = 32
warmup = 1
min_iterations = 30
min_seconds = 0.6
slice_seconds = 0.03
eval_examples = 200
"""


@pytest.fixture
def sliced(built, tmp_path) -> Path:
    work = tmp_path / "w"
    shutil.copytree(built, work)
    text = (work / "matrix.toml").read_text()
    head, _, _ = text.partition("[profiles.t.measure]")
    (work / "matrix.toml").write_text(head + SLICED)
    return work


def test_cells_of_one_model_take_turns_in_random_order_and_pair_by_round(sliced: Path) -> None:
    matrix = load_matrix(sliced / "matrix.toml", builders=builders.registry(), backends=runners.registry())
    p = plan(
        matrix, "t", "cpu", builder_formats={k: v.output_format for k, v in builders.registry().items()},
        backends=runners.registry(), run_id="r", matrix_arg=str(sliced / "matrix.toml"),
        artifacts_arg=str(sliced / "artifacts"), results_arg=str(sliced / "results"),
    )  # fmt: skip
    runs = [j for j in p.jobs if j.kind == "run"]
    assert runs and {j.turns for j in runs} == {"tiny-r0"} and all("--turns" in j.argv for j in runs)
    lines: list[str] = []
    jobs = execute(
        p, Launcher(), Store(sliced / "artifacts"), log=lines.append,
        turns_root=sliced / "results" / "r" / TURNS_DIR,
    )  # fmt: skip
    assert all(j.state in ("done", "cached") for j in jobs), [(j.name, j.reason, j.log_tail) for j in jobs]
    assert any("[turns ] tiny-r0:" in line and "dropped" not in line for line in lines), lines

    results = [read_record(Result, f) for f in sorted((sliced / "results" / "r").glob("*.json"))]
    assert len(results) == p.cells and all(r.status == "ok" for r in results), [r.reason for r in results]
    spans = []
    for r in results:
        lat = r.latency
        assert lat is not None and lat.slices, r.cell
        assert sum(s.count for s in lat.slices) == len(lat.samples) == lat.iterations
        assert lat.iterations >= 3 and lat.background_cores is not None
        rounds = [s.round for s in lat.slices]
        assert rounds == sorted(set(rounds)), "one slice per round, in round order"
        spans += [(s.started, s.started + sum(lat.samples[s.first : s.first + s.count]) / 1e3) for s in lat.slices]
    # One slice at a time across every process: no two cells' slices overlap.
    spans.sort()
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end - 1e-3
    # The order within a round is random: the sequence of cells is not the same in every round.
    starts: dict[int, list[tuple[float, str]]] = {}
    for r in results:
        for s in r.latency.slices:  # type: ignore[union-attr]
            starts.setdefault(s.round, []).append((s.started, f"{r.cell.variant}@{r.cell.runner}b{r.cell.batch_size}"))
    # (A null cell hits its sample cap in its first slice and sits the later rounds out.)
    common = set.intersection(*({name for _, name in v} for v in starts.values()))
    orders = {tuple(name for _, name in sorted(v) if name in common) for v in starts.values()}
    assert len(starts) >= 2 and len(common) >= 4 and len(orders) > 1
    # A speed-up between two cells of the run is paired by round.
    loaded, errors = load_results([sliced / "results" / "r"])
    assert not errors
    idx = {(r.cell.variant, r.cell.runner, r.cell.batch_size): i for i, r in enumerate(loaded)}
    base = cell_slices(loaded, [idx[("reference", "torch-eager", 1)]])
    other = cell_slices(loaded, [idx[("ort-int8-dynamic", "ort-cpu", 1)]])
    ci = ratio_ci(base, other)
    assert ci is not None and "paired" in ci.method and ci.low <= ci.value <= ci.high
