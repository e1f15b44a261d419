"""Manifest/Result records: round trips, atomic writes, schema export, version and field checks."""

from __future__ import annotations

import json

import pytest

from quantmatrix.__main__ import SCHEMA_DIR
from quantmatrix.capabilities import Capability
from quantmatrix.errors import RecordError
from quantmatrix.hardware import fingerprint
from quantmatrix.metrics import agreement, quality
from quantmatrix.records import (
    Cell,
    Latency,
    Manifest,
    Result,
    TensorSpec,
    json_schemas,
    parse_record,
    read_record,
    render_schema,
    write_record,
)
from quantmatrix.store import now_iso


def make_manifest() -> Manifest:
    return Manifest(
        key="m.v-0123",
        builder="reference",
        variant="reference",
        model="m",
        format="torch",
        precision="fp32",
        task="text-classification",
        id2label={"0": "a", "1": "b"},
        io_inputs=[TensorSpec(name="input_ids", dtype="int64", shape=["batch", "sequence"])],
        environment=fingerprint(),
        created=now_iso(),
    )


def make_result() -> Result:
    import numpy as np

    ref = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.9]])
    var = np.array([[1.5, 0.1], [0.2, 1.0], [0.8, 1.0]])
    return Result(
        run_id="r1",
        status="ok",
        verdict="pass",
        fingerprint=fingerprint(),
        started=now_iso(),
        finished=now_iso(),
        capabilities=[Capability.SCORES_QUALITY, Capability.GENERATES],
        cell=Cell(
            model="m",
            variant="v",
            runner="ort",
            backend="onnxruntime",
            precision="int8",
            device="cpu",
            batch_size=1,
            seq_mode="padded",
            seq_len=128,
        ),
        latency=Latency(
            samples=[1.0, 2.0], p50=1.5, p90=1.9, p99=2.0, mean=1.5, stdev=0.7, min=1.0, max=2.0, iterations=2, warmup=1
        ),
        quality=quality([0, 1, 0], var.argmax(-1), ["a", "b"]),
        agreement=agreement(ref, var, ["x", "y", "z"], [0, 1, 0], ["a", "b"]),
    )


@pytest.mark.parametrize("make", [make_manifest, make_result])
def test_round_trip(tmp_path, make):
    record = make()
    path = tmp_path / "sub" / "r.json"
    write_record(record, path)
    assert read_record(type(record), path) == record
    assert not list(path.parent.glob(".*tmp"))  # no temp files left behind


def test_unknown_version_and_field_rejected(tmp_path):
    data = json.loads(make_result().model_dump_json())
    with pytest.raises(RecordError, match=r"unsupported Result schema_version 99"):
        parse_record(Result, {**data, "schema_version": 99}, "x.json")
    with pytest.raises(RecordError, match=r"x.json: surprise: Extra inputs are not permitted"):
        parse_record(Result, {**data, "surprise": 1}, "x.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RecordError, match=r"bad.json: invalid JSON at line 1"):
        read_record(Result, bad)


def test_exported_json_schemas_are_current():
    for name, schema in json_schemas().items():
        path = SCHEMA_DIR / name
        assert path.is_file(), f"{path} missing: run `python -m quantmatrix schemas`"
        assert path.read_text() == render_schema(schema), f"{path} is stale: run `python -m quantmatrix schemas`"


def test_records_validate_against_exported_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((SCHEMA_DIR / "result.schema.json").read_text())
    jsonschema.validate(json.loads(make_result().model_dump_json()), schema)
    schema = json.loads((SCHEMA_DIR / "manifest.schema.json").read_text())
    jsonschema.validate(json.loads(make_manifest().model_dump_json()), schema)


def test_metrics_values():
    q = quality([0, 0, 1, 1], [0, 1, 1, 1], ["a", "b"])
    assert q.accuracy == 0.75
    assert q.per_class["a"].precision == 1.0 and q.per_class["a"].recall == 0.5
    assert q.macro_f1 == pytest.approx((2 / 3 + 0.8) / 2)
    assert q.confusion == [[1, 1], [0, 2]]


OLD_RESULTS = SCHEMA_DIR.parent / "tests" / "fixtures" / "results-before-capabilities"


def test_results_written_before_capabilities_load_and_are_classified_as_before():
    """Schema-1 results (written by the run job before backends declared capabilities) migrate on load."""
    from quantmatrix.summary import load_results, summarise

    files = sorted(OLD_RESULTS.glob("*.json"))
    assert len(files) == 3
    for path in files:
        assert json.loads(path.read_text())["schema_version"] == 1 and "capabilities" not in path.read_text()
    results, errors = load_results([OLD_RESULTS])
    assert not errors
    by_runner = {r.cell.runner: r for r in results}
    assert {r.schema_version for r in results} == {2}
    assert by_runner["null"].capabilities == [Capability.MEASURES_OVERHEAD]
    assert Capability.FP32_BASELINE in by_runner["torch-eager"].capabilities
    assert by_runner["ort-cpu"].capabilities == [Capability.SCORES_QUALITY, Capability.GENERATES]
    rows = {r.runner: r for r in summarise(results)}
    # The null runner is the harness overhead (a share of the fastest real p50), not a speed-up.
    assert rows["null"].measures_overhead and rows["null"].speedup is None
    assert rows["null"].overhead == rows["null"].p50_ms / min(rows["torch-eager"].p50_ms, rows["ort-cpu"].p50_ms)
    # Speed-ups are against the eager FP32 reference on torch.
    assert rows["torch-eager"].fp32_baseline and rows["torch-eager"].speedup == 1.0
    assert not rows["ort-cpu"].fp32_baseline and not rows["ort-cpu"].measures_overhead
    assert rows["ort-cpu"].speedup == rows["torch-eager"].p50_ms / rows["ort-cpu"].p50_ms


def test_migrated_result_round_trips_as_the_current_version(tmp_path):
    path = next(OLD_RESULTS.glob("*__null__*.json"))
    old = read_record(Result, path)
    write_record(old, tmp_path / "new.json")
    data = json.loads((tmp_path / "new.json").read_text())
    assert data["schema_version"] == 2 and data["capabilities"] == ["measures-overhead"]
    assert read_record(Result, tmp_path / "new.json") == old
