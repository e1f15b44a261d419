"""Interleaved timing end to end: real run jobs in their own processes take turns through the launcher."""

from __future__ import annotations

import itertools
import json
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


def test_two_runs_side_by_side_take_turns_together_and_compare_pairs_them(sliced: Path, monkeypatch, capsys) -> None:
    """Run `a` exported by one checkout, run `b` launched beside it: one coordinator per round serves both,
    so `compare` pairs every cell of the two runs by round."""
    from bench.__main__ import main

    monkeypatch.chdir(sliced)
    text = (sliced / "matrix.toml").read_text()
    (sliced / "matrix.toml").write_text(text.replace("batch_sizes = [1, 4]", "batch_sizes = [1]"))
    common = ["--profile", "t", "--runtime", "local", "--artifacts", "artifacts", "--results", "results"]
    assert main([*common, "--run-id", "a", "--export-plan", "plans/a.json"]) == 0
    assert not list((sliced / "results").glob("a/*.json")), "exporting measures nothing"
    assert main([*common, "--run-id", "b", "--side-by-side", "plans/a.json"]) == 0
    out = capsys.readouterr().out
    assert "side by side with run a" in out and "b against a, measured side by side:" in out

    loaded, errors = load_results([sliced / "results" / "a", sliced / "results" / "b"])
    assert not errors
    by_run: dict[str, dict[tuple[str, str], Result]] = {"a": {}, "b": {}}
    for r in loaded:
        assert r.status == "ok", r.reason
        by_run[r.run_id][(r.cell.variant, r.cell.runner)] = r
    assert by_run["a"].keys() == by_run["b"].keys() and len(by_run["a"]) >= 4
    groups = {r.latency.turn_group for r in loaded if r.latency}
    assert len(groups) == 1 and None not in groups, "both runs' cells took turns from one coordinator"

    from quantmatrix.compare import compare_cells
    from quantmatrix.summary import summarise

    changes = compare_cells(loaded, summarise(loaded), "a", "b")
    tested = [c for c in changes if c.test is not None]
    assert len(tested) >= 3, [(c.name, c.note) for c in changes]
    for c in tested:
        assert c.test is not None and c.interval is not None
        assert c.test.method.startswith("Wilcoxon signed-rank"), c.test.method
        assert c.interval.method.startswith("paired"), c.interval.method
        assert c.interval.low <= c.ratio <= c.interval.high  # type: ignore[operator]

    # A rerun resumes both runs: every cell of each is already measured, nothing is launched again.
    assert main([*common, "--run-id", "a", "--export-plan", "plans/a.json"]) == 0
    assert main([*common, "--run-id", "b", "--side-by-side", "plans/a.json"]) == 0
    out = capsys.readouterr().out
    assert " running " not in out and "cached" in out


def test_a_side_plan_that_cannot_run_here_is_refused_naming_file_and_key(tmp_path: Path) -> None:
    from bench import Plan, SideBySideError, read_side_plan, side_by_side

    bad = tmp_path / "plan.json"
    bad.write_text('{"format": "something-else"}')
    with pytest.raises(SideBySideError, match=r"plan\.json: format: expected 'quantmatrix-plan/1'"):
        read_side_plan(bad)
    doc = {"format": "quantmatrix-plan/1", "run_id": "a", "profile": "t", "device": "cpu", "python": "/usr/bin/env",
           "cwd": str(tmp_path), "artifacts": str(tmp_path / "elsewhere"), "results": str(tmp_path), "cells": 1,
           "jobs": [{"kind": "run", "name": "run x"}]}  # fmt: skip
    bad.write_text(json.dumps(doc))
    with pytest.raises(SideBySideError, match=r"jobs\[0\]: missing argv, deps"):
        read_side_plan(bad)
    doc["jobs"] = [{**dict.fromkeys(["kind", "name", "key", "model", "variant", "runner", "device", "turns"], ""),
                    "repeat": 0, "deps": [], "done": False, "argv": "-m runners job"}]  # fmt: skip
    bad.write_text(json.dumps(doc))
    with pytest.raises(SideBySideError, match=r"jobs\[0\]\.argv: expected a list of strings"):
        read_side_plan(bad)
    doc["jobs"] = []
    bad.write_text(json.dumps(doc))
    theirs = read_side_plan(bad)
    ours = Plan(jobs=[], cells=0)
    with pytest.raises(SideBySideError, match="is not this run's artefact store"):
        side_by_side(ours, theirs, run_id="b", device="cpu", artifacts=tmp_path / "mine", turns_root=tmp_path)
    with pytest.raises(SideBySideError, match="this run's too"):
        side_by_side(ours, theirs, run_id="a", device="cpu", artifacts=tmp_path / "elsewhere", turns_root=tmp_path)
