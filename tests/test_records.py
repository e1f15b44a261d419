"""Manifest/Result records: round trips, atomic writes, schema export, version and field checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantmatrix.__main__ import SCHEMA_DIR
from quantmatrix.capabilities import Capability
from quantmatrix.errors import RecordError
from quantmatrix.hardware import fingerprint
from quantmatrix.metrics import agreement, quality
from quantmatrix.records import (
    BnbLlmInt8Load,
    Cell,
    DecoderArch,
    DynamicInt8LmLoad,
    DynamicInt8Load,
    EncoderArch,
    EngineTarget,
    HfLoad,
    Latency,
    Manifest,
    MixedPrecisionSearch,
    Pt2eInt8Load,
    Result,
    TensorSpec,
    json_schemas,
    parse_record,
    read_record,
    render_schema,
    write_record,
)
from quantmatrix.store import now_iso

# Records written by schema version 1 (the code at 4fea0a8, building the tiny test matrices).
V1 = Path(__file__).parent / "fixtures" / "v1"


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
        load=DynamicInt8Load(engine="torchao", keep_fp32=["classifier"]),
        arch=EncoderArch(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, num_labels=2),
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
        quality_eval="natural length, batch 32",
        reference_macro_f1=0.9,
        timed_batches=3,
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


# -- Migrations from schema version 1 -------------------------------------------------------------------


def _v1(name: str) -> dict:
    data = json.loads((V1 / name).read_text())
    assert data["schema_version"] == 1
    return data


def test_v1_manifests_load_with_typed_load_recipes_arch_and_search():
    ref = read_record(Manifest, V1 / "manifest-v1-reference.json")
    assert ref.schema_version == 2 and ref.load == HfLoad()
    assert ref.arch == EncoderArch(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_labels=9
    )
    # What no stage reads stays where it was; what a stage reads left `extra`.
    assert ref.extra["dataset"] == "headlines9" and not {"arch", "torch_loader", "recipe"} & set(ref.extra)

    dyn = read_record(Manifest, V1 / "manifest-v1-torch-int8-dynamic.json")
    assert dyn.load == DynamicInt8Load(engine="torch.ao")
    # The recipe the rebuild functions and results name is exactly version 1's dict.
    assert dyn.load.as_recipe() == _v1("manifest-v1-torch-int8-dynamic.json")["extra"]["recipe"]
    assert "deprecated" in dyn.extra["deprecation"] and dyn.arch is None

    pt2e = read_record(Manifest, V1 / "manifest-v1-torch-int8-pt2e.json")
    assert pt2e.load == Pt2eInt8Load(calibration="calibration.json")
    assert read_record(Manifest, V1 / "manifest-v1-torch-fp16.json").load == HfLoad()

    lm_ref = read_record(Manifest, V1 / "manifest-v1-lm-reference.json")
    assert isinstance(lm_ref.arch, DecoderArch) and lm_ref.arch.vocab_size == 2048
    assert lm_ref.tokenizer_origin and "not GPT-2's tokenizer" in lm_ref.tokenizer_origin
    lm = read_record(Manifest, V1 / "manifest-v1-lm-lm-torch-int8.json")
    assert lm.load == DynamicInt8LmLoad() and lm.load.as_recipe() == {"name": "dynamic-int8-lm"}

    mixed = read_record(Manifest, V1 / "manifest-v1-mixed-k.json")
    old = _v1("manifest-v1-mixed-k.json")["extra"]["search"]
    assert isinstance(mixed.search, MixedPrecisionSearch) and mixed.search.model_dump(mode="json") == old
    assert mixed.load is None and "search" not in mixed.extra
    onnx = read_record(Manifest, V1 / "manifest-v1-onnx-fp32.json")
    assert onnx.load is None and onnx.search is None and onnx.extra["exporter"].startswith("optimum")


def test_v1_manifest_migration_keeps_every_other_field():
    for path in sorted(V1.glob("manifest-v1-*.json")):
        old = _v1(path.name)
        new = json.loads(read_record(Manifest, path).model_dump_json())
        moved = {"schema_version", "extra", "load", "arch", "search", "engine", "tokenizer_origin"}
        # Fields added to the fingerprint since (e.g. git_commit_date) load as their defaults.
        added = {k: v for k, v in new["environment"].items() if k not in old["environment"]}
        assert all(v is None for v in added.values()), added
        new["environment"] = {k: v for k, v in new["environment"].items() if k in old["environment"]}
        assert {k: v for k, v in new.items() if k not in moved} == {k: v for k, v in old.items() if k not in moved}
        # Nothing is lost: every version-1 extra key is either still in extra or became a typed field.
        typed = {"torch_loader", "recipe", "arch", "search", "engine_target", "tokenizer_origin"}
        assert set(old["extra"]) - typed == set(new["extra"]), path.name


def test_v1_engine_target_and_bnb_recipe_become_typed():
    # No TensorRT or bitsandbytes build here: version 1's keys, as those builders wrote them, on a real manifest.
    data = _v1("manifest-v1-onnx-fp32.json")
    engine = {"tensorrt_version": "10.13.0.35", "gpu_name": "NVIDIA H200", "compute_capability": "9.0"}
    m = parse_record(Manifest, {**data, "format": "tensorrt", "extra": {"engine_target": engine}}, "trt.json")
    assert m.engine == EngineTarget(**engine) and m.extra == {}
    lm = _v1("manifest-v1-lm-lm-torch-int8.json")
    bnb = {"torch_loader": "bnb-llm-int8", "recipe": {"name": "bnb-llm-int8", "threshold": 6.0}}
    m = parse_record(Manifest, {**lm, "extra": bnb}, "bnb.json")
    assert m.load == BnbLlmInt8Load(threshold=6.0) and m.load.as_recipe() == bnb["recipe"]


def test_v1_manifest_with_an_unknown_loader_is_a_clear_error():
    data = _v1("manifest-v1-torch-int8-dynamic.json")
    bad = {**data, "extra": {**data["extra"], "torch_loader": "pickle"}}
    with pytest.raises(RecordError, match=r"old.json: cannot migrate Manifest schema_version 1: .*'pickle'"):
        parse_record(Manifest, bad, "old.json")
    bad = {**data, "extra": {**data["extra"], "recipe": {"name": "no-such-recipe"}}}
    with pytest.raises(RecordError, match=r"old.json: load: Input tag 'no-such-recipe'"):
        parse_record(Manifest, bad, "old.json")


def test_v2_torch_manifest_must_name_its_load_recipe():
    data = json.loads(make_manifest().model_dump_json())
    with pytest.raises(RecordError, match=r"m.json: \(root\): .*a torch artefact needs `load`"):
        parse_record(Manifest, {**data, "load": None}, "m.json")
    with pytest.raises(RecordError, match=r"only a torch one has it"):
        parse_record(Manifest, {**data, "format": "onnx"}, "m.json")
    # A failed build has nothing to load.
    assert parse_record(Manifest, {**data, "load": None, "status": "failed"}, "m.json").load is None


def test_v1_results_load_with_typed_sections():
    r = read_record(Result, V1 / "result-v1-classifier.json")
    old = _v1("result-v1-classifier.json")["extra"]
    assert r.schema_version == 2 and r.extra == {}
    assert (r.quality_eval, r.reference_macro_f1, r.timed_batches) == (
        old["quality_eval"],
        old["reference_macro_f1"],
        old["timed_batches"],
    )
    assert r.quality is not None and r.verdict == "pass"
    gen = read_record(Result, V1 / "result-v1-generation.json")
    assert gen.generation is not None and gen.quality_eval is None
    assert gen.extra == _v1("result-v1-generation.json")["extra"]  # free-form notes stay as they were
    # A migrated record writes and reads back as version 2.
    assert parse_record(Result, json.loads(r.model_dump_json()), "again.json") == r


def test_migrated_v1_records_validate_against_the_exported_schema():
    jsonschema = pytest.importorskip("jsonschema")
    for kind, name in ((Manifest, "manifest"), (Result, "result")):
        schema = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
        for path in sorted(V1.glob(f"{name}-v1-*.json")):
            jsonschema.validate(json.loads(read_record(kind, path).model_dump_json()), schema)


def test_no_stage_reads_a_records_free_form_extra(repo):
    """What a later stage needs is a typed field; `extra` (Manifest and Result) is for people only."""
    import ast

    readers = []
    for package in ("builders", "runners", "report", "quantmatrix", "bench"):
        for path in sorted((repo / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            readers += [
                f"{path.relative_to(repo)}:{node.lineno}"
                for node in ast.walk(tree)
                if isinstance(node, ast.Attribute) and node.attr == "extra" and isinstance(node.ctx, ast.Load)
            ]
    assert not readers, f"reads of a record's .extra: {readers}"
