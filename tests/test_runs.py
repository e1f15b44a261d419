"""Run jobs end to end on the tiny model: measurement, the guard against silent drift, bad artefacts, resume.

A tiny reference, its ONNX export and INT8 variants are built once per session (`built`, in conftest.py);
every test works on its own copy of the artefacts and corrupts it the way real failures look.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import builders
import runners
from bench import Job, Launcher, Plan, execute, plan
from quantmatrix.errors import QuantmatrixError
from quantmatrix.hardware import LAUNCHED_AT_ENV
from quantmatrix.plan import build_jobs
from quantmatrix.records import DynamicInt8Load, Manifest, Result, read_record, write_record
from quantmatrix.spec import load_matrix
from quantmatrix.store import Store, list_files
from quantmatrix.summary import compare_runs, headlines, launch_overheads, load_results, render_text, summarise
from runners.job import RunJob
from runners.tasks import process_start_time

pytestmark = pytest.mark.slow


@pytest.fixture
def work(built, tmp_path) -> Path:
    shutil.copytree(built, tmp_path / "w")
    return tmp_path / "w"


def _matrix(work: Path):
    return load_matrix(work / "matrix.toml", builders=builders.registry(), backends=runners.registry())


def _run(work: Path, variant: str, runner: str, repeat: int = 0) -> list[Result]:
    job = RunJob(
        _matrix(work), "t", "tiny", variant, runner,
        artifacts=work / "artifacts", results=work / "results", run_id="r", repeat=repeat, log=lambda _: None,
    )  # fmt: skip
    job.run()
    return [read_record(Result, p) for p in sorted((work / "results" / "r").glob(f"tiny__{variant}__{runner}__*"))]


def _artefact(work: Path, variant: str) -> Path:
    key = {j.variant: j.key for j in build_jobs(_matrix(work), "tiny", (variant,))}[variant]
    return work / "artifacts" / key


def _rewrite_manifest(art: Path, **changes) -> None:
    """Change a manifest as a buggy builder would have written it (file list kept consistent)."""
    m = read_record(Manifest, art / "manifest.json")
    m = m.model_copy(update={**changes, "files": [f for f in list_files(art) if f.path != "manifest.json"]})
    write_record(m, art / "manifest.json")


def test_int8_variant_is_measured_scored_and_judged(work):
    results = _run(work, "ort-int8-dynamic", "ort-cpu")
    assert len(results) == 4  # batch 1 and 4, padded and natural
    for r in results:
        assert r.status == "ok", r.reason
        assert r.cell.precision == "int8" and r.threads == 1 and r.runner_options["intra_op_threads"] == 1
        # Read back from the session: threads spin within a run and stop when it returns.
        assert r.runner_options["allow_spinning"] is True and r.runner_options["force_spinning_stop"] is True
        assert r.latency.p50 > 0 and len(r.latency.samples) >= 3 and r.latency.p50 <= r.latency.p99
        assert r.quality.examples == 200 and 0 <= r.quality.macro_f1 <= 1
        assert len(r.quality.confusion) == 9 and sum(map(sum, r.quality.confusion)) == 200
        assert r.agreement.examples == 200 and len(r.agreement.worst) <= 10
        assert r.verdict in ("pass", "drift", "fail")
        assert len(r.canary) == 12 and len(r.canary[0].top5) == 5
        assert r.cold_start.load_ms > 0 and r.peak_rss_bytes > 0 and r.artifact_bytes > 0
    padded = {r.cell.batch_size: r.cell.seq_len for r in results if r.cell.seq_mode == "padded"}
    assert padded == {1: 32, 4: 32}


def test_null_runner_measures_harness_overhead(work):
    null = _run(work, "reference", "null")
    eager = _run(work, "reference", "torch-eager")
    assert all(r.status == "ok" and r.verdict == "n/a" for r in null)
    assert max(r.latency.p50 for r in null) < min(r.latency.p50 for r in eager)


def test_permuted_label_map_is_caught_by_the_guard(work):
    art = _artefact(work, "onnx-fp32")
    m = read_record(Manifest, art / "manifest.json")
    labels = dict(m.id2label)
    labels["0"], labels["2"] = labels["2"], labels["0"]  # "World" <-> "Business"
    _rewrite_manifest(art, id2label=labels)
    results = _run(work, "onnx-fp32", "ort-cpu")
    assert results and all(r.status == "failed" and r.latency is None for r in results)
    assert "guard" in results[0].reason and "label" in results[0].reason


def test_swapped_input_names_everything_is_one_class_is_caught(work):
    """The seeds' TensorRT bug: inputs bound in the wrong order, every prediction the same class."""
    import onnx

    art = _artefact(work, "onnx-fp32")
    model = onnx.load(str(art / "model.onnx"))
    # Wire the graph as a positional binding in the wrong order would: the mask feeds the token-type
    # embedding and the (all-zero) token types feed the attention mask.
    swap = {"attention_mask": "token_type_ids", "token_type_ids": "attention_mask"}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = swap.get(name, name)
    onnx.save(model, str(art / "model.onnx"))
    _rewrite_manifest(art)
    results = _run(work, "onnx-fp32", "ort-cpu")
    assert all(r.status == "failed" and r.latency is None for r in results)
    assert results[0].reason.startswith("guard: ") and "agree" in results[0].reason


@pytest.mark.parametrize("damage", ["missing", "hash", "opset"])
def test_bad_artefacts_give_one_failed_result_each_and_other_cells_go_on(work, damage):
    import onnx

    art = _artefact(work, "ort-int8-dynamic")
    model_file = art / "model.onnx"
    if damage == "missing":
        model_file.unlink()
    elif damage == "hash":
        raw = bytearray(model_file.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        model_file.write_bytes(bytes(raw))
    else:
        model = onnx.load(str(model_file))
        model.opset_import[0].version = 99  # an opset no runtime implements
        onnx.save(model, str(model_file))
        _rewrite_manifest(art)
    results = _run(work, "ort-int8-dynamic", "ort-cpu")
    assert len(results) == 4 and all(r.status == "failed" for r in results)
    expected = {
        "missing": "model.onnx is missing",
        "hash": "sha256 does not match",
        "opset": "cannot load model.onnx: ONNX Runtime only",
    }[damage]
    assert expected in results[0].reason, results[0].reason
    assert "\n" not in results[0].reason
    # Another variant on the same runner is unaffected.
    assert all(r.status == "ok" for r in _run(work, "onnx-fp32", "ort-cpu"))


def test_rerun_resumes_only_missing_and_disturbed_cells(work):
    first = _run(work, "onnx-fp32", "ort-cpu")
    files = sorted((work / "results" / "r").glob("tiny__onnx-fp32__ort-cpu__*"))
    # Whether this (shared) machine disturbed the first run is not ours to choose: say which cells were.
    for i, (path, r) in enumerate(zip(files, first, strict=True)):
        assert r.latency is not None
        r.latency.disturbed = i == 1
        write_record(r, path)
    stamps = {p.name: p.stat().st_mtime_ns for p in files}
    files[0].unlink()
    second = _run(work, "onnx-fp32", "ort-cpu")
    assert len(second) == len(first) == 4
    changed = [p.name for p in files if p.stat().st_mtime_ns != stamps[p.name]]
    assert changed == [files[0].name, files[1].name]


def test_bench_plan_interleaves_rounds_and_a_crash_or_oom_does_not_stop_the_run(work):
    matrix = _matrix(work)
    p = plan(
        matrix, "t", "cpu",
        builder_formats={k: v.output_format for k, v in builders.registry().items()},
        backends=runners.registry(),
        run_id="r", repeats=2,
    )  # fmt: skip
    runs = [j for j in p.jobs if j.kind == "run"]
    pairs = [(j.variant, j.runner) for j in runs]
    assert pairs[: len(pairs) // 2] == pairs[len(pairs) // 2 :], "round 2 repeats round 1 in the same order"
    assert ("reference", "null") in pairs and ("onnx-fp32", "null") not in pairs
    assert ("reference", "ort-cpu") not in pairs and ("ort-int8-dynamic", "ort-cpu") in pairs

    # Real subprocesses: one killed like the OOM killer does, one crashing, one fine.
    jobs = [
        Job(kind="run", name="oom", argv=["-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]),
        Job(kind="run", name="crash", argv=["-c", "raise SystemExit('runner exploded')"]),
        # the launcher tells the job when it started it (for the isolation overhead in results)
        Job(
            kind="run",
            name="fine",
            argv=["-c", "import os, time; assert 0 < time.time() - float(os.environ['QUANTMATRIX_LAUNCHED_AT']) < 60"],
        ),
    ]
    done = execute(Plan(jobs=jobs, cells=3), Launcher(), Store(work / "artifacts"), log=lambda _: None)
    assert [j.state for j in done] == ["failed", "failed", "done"], done[2].log_tail
    assert done[0].reason.startswith("killed by SIGKILL")
    assert "runner exploded" in done[1].reason


def test_summary_groups_rounds_and_reports_speedup(work, monkeypatch):
    # As if a launcher had started this (pytest) process 250 ms before it began.
    monkeypatch.setenv(LAUNCHED_AT_ENV, repr(process_start_time() - 0.25))
    for repeat in (0, 1):
        _run(work, "reference", "torch-eager", repeat)
        _run(work, "ort-int8-dynamic", "ort-cpu", repeat)
        _run(work, "reference", "null", repeat)
    results, errors = load_results([work / "results"])
    (work / "results" / "r" / "junk.json").write_text(json.dumps({"schema_version": 99}))
    _, errors = load_results([work / "results"])
    assert len(errors) == 1 and "junk.json" in errors[0]
    rows = summarise(results)
    assert len(rows) == 3 * 4
    ref = next(
        r for r in rows
        if (r.variant, r.runner, r.batch_size, r.seq_mode) == ("reference", "torch-eager", 1, "padded")
    )  # fmt: skip
    assert ref.rounds == 2 and ref.speedup == pytest.approx(1.0) and ref.spread >= 1.0
    null = next(r for r in rows if r.runner == "null" and r.batch_size == 1)
    assert null.speedup is None and 0 < null.overhead < 1
    int8 = next(r for r in rows if r.variant == "ort-int8-dynamic" and r.batch_size == 1 and r.seq_mode == "padded")
    assert int8.speedup == pytest.approx(ref.p50_ms / int8.p50_ms)
    assert np.isfinite(int8.p50_ms)
    assert "ort-int8-dynamic" in render_text(rows)
    lines = [h for h in headlines(rows) if h.startswith("tiny b1 padded")]
    if int8.verdict == "pass" and (int8.disturbed or int8.baseline_disturbed):  # timed beside other work
        [line] = lines
        assert "no headline" in line and "timed while disturbed" in line
    elif int8.verdict == "pass":  # the only INT8 variant here: it is the headline, or there is none
        [line] = lines
        assert f"ort-int8-dynamic on ort-cpu {int8.p50_ms:.2f} ms vs FP32 eager {ref.p50_ms:.2f} ms" in line
        assert "null runner" in line and "worst spread" in line
    else:
        assert lines == []
    # A cell timed beside other work is named in a warning, with how much of the machine that work took.
    # Measured for loops of any length, over a window of at least 0.5 s (/proc/stat counts 10 ms ticks).
    assert all(r.latency.background_cores is not None and r.latency.load_window_s >= 0.5 for r in results if r.latency)
    for r in results:
        if r.latency:
            r.latency.background_cores = 1.5 if r.cell.variant == "ort-int8-dynamic" else 0.0
    [warning] = [line for line in render_text(summarise(results)).splitlines() if line.startswith("warning:")]
    assert warning.startswith("warning: 4 of 12 cells") and "ort-int8-dynamic on ort-cpu, 1.50 cores" in warning
    # Rounds 2x apart while the memory bandwidth probe moved 2x too: the note says so beside the spread.
    for r in results:
        if r.latency:
            moved = r.cell.variant == "ort-int8-dynamic" and r.cell.repeat == 1
            r.latency.p50 *= 2 if moved else 1
            r.latency.bandwidth_gbs = [10.0 if moved else 20.0] * 2
    [note] = [line for line in render_text(summarise(results)).splitlines() if line.startswith("note:")]
    assert "memory bandwidth by up to 2.00x" in note
    cold = next(r for r in results if r.cell.variant == "ort-int8-dynamic").cold_start
    assert cold.launch_ms == pytest.approx(250, abs=1) and cold.launch_to_timed_ms > cold.launch_ms
    [line] = launch_overheads(results)
    assert "launcher -> process 250 ms" in line and "over 6 run jobs" in line
    # Another run of the same cells 1.2x slower (as if in containers): compared cell by cell, null left out.
    other = [r.model_copy(deep=True, update={"run_id": "r2"}) for r in results]
    for r in other:
        if r.latency:
            r.latency.p50 *= 1.2
    lines = compare_runs(summarise(results + other), "r", "r2")
    assert lines[-1].startswith("r2 / r: median p50 ratio 1.200 over 8 cells") and "0 of 8 within 10%" in lines[-1]
    assert not any("/null/" in line for line in lines)
    with pytest.raises(QuantmatrixError, match="run 'nope' has no measured cells"):
        compare_runs(summarise(results), "r", "nope")


@pytest.mark.parametrize("variant", ["torch-int8-dynamic", "torch-int8-dynamic-torchao"])
def test_torch_int8_recipes_rebuild_from_safetensors_and_run(built, work, variant):
    art = _artefact(work, variant)
    manifest = read_record(Manifest, art / "manifest.json")
    assert manifest.precision == "int8" and isinstance(manifest.load, DynamicInt8Load)
    assert manifest.extra["quantized_linear"] > 0
    # No copy and no pickle: the weights are the reference's own safetensors file (in the original store).
    weights = [
        built / "artifacts" / _artefact(work, v).name / "model" / "model.safetensors" for v in (variant, "reference")
    ]
    assert weights[0].samefile(weights[1])
    assert not [p for p in art.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    if variant == "torch-int8-dynamic":
        assert "deprecated" in manifest.extra["deprecation"]
    results = _run(work, variant, "torch-eager")
    assert len(results) == 4 and all(r.status == "ok" and r.cell.precision == "int8" for r in results), [
        r.reason for r in results
    ]
    assert results[0].agreement.top1 > 0.8


def test_an_artefact_whose_manifest_version_1_wrote_still_loads_and_measures_the_same(work):
    """Artefacts built before schema version 2 migrate at load: same recipe, same predictions."""
    art = _artefact(work, "torch-int8-dynamic")
    new = _run(work, "torch-int8-dynamic", "torch-eager")
    # The committed version-1 manifest of this variant, pointed at this artefact's files.
    old = json.loads((Path(__file__).parent / "fixtures" / "v1" / "manifest-v1-torch-int8-dynamic.json").read_text())
    current = read_record(Manifest, art / "manifest.json")
    old |= {"key": current.key, "inputs": current.inputs, "files": [f.model_dump() for f in current.files]}
    (art / "manifest.json").write_text(json.dumps(old))
    assert Store(work / "artifacts").load(current.key).load == current.load
    shutil.rmtree(work / "results")
    again = _run(work, "torch-int8-dynamic", "torch-eager")
    assert [r.status for r in again] == ["ok"] * 4, [r.reason for r in again]
    for a, b in zip(new, again, strict=True):
        assert a.quality == b.quality and a.agreement is not None and b.agreement is not None
        assert a.agreement.predictions == b.agreement.predictions and a.verdict == b.verdict


def test_a_job_whose_code_changed_after_planning_says_so(work, capsys):
    """Keys hash the code: a build or run job that sees other code than its launcher planned with stops
    with that reason, instead of building or looking for an artefact the rest of the run never uses."""
    from builders.__main__ import main as builders_main
    from runners.__main__ import main as runners_main

    p = plan(
        _matrix(work), "t", "cpu",
        builder_formats={k: v.output_format for k, v in builders.registry().items()},
        backends=runners.registry(), run_id="r",
    )  # fmt: skip
    build = next(j for j in p.jobs if j.kind == "build" and j.variant == "ort-int8-dynamic")
    run = next(j for j in p.jobs if j.kind == "run" and j.variant == "ort-int8-dynamic")
    assert build.argv[build.argv.index("--expect-key") + 1] == build.key
    assert run.argv[run.argv.index("--expect-key") + 1] == build.key
    common = ["--matrix", str(work / "matrix.toml"), "--artifacts", str(work / "artifacts"), "--model", "tiny"]
    stale = "tiny.ort-int8-dynamic-0000000000000000"
    assert builders_main(["job", *common, "--variant", "ort-int8-dynamic", "--expect-key", stale]) == 2
    err = capsys.readouterr().err
    assert f"but this run planned {stale}: the code or the matrix changed after the run started" in err
    assert builders_main(["job", *common, "--variant", "ort-int8-dynamic", "--expect-key", build.key]) == 0
    code = runners_main(["job", *common, "--results", str(work / "results"), "--profile", "t",
                         "--variant", "ort-int8-dynamic", "--runner", "ort-cpu", "--expect-key", stale])  # fmt: skip
    assert code == 2 and "changed after the run started" in capsys.readouterr().err
    assert not (work / "results" / "local").exists()  # nothing measured under the stale plan
