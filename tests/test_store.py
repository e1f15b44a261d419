"""Artefact store: keys, reuse of complete artefacts, detection of partial or tampered ones."""

from __future__ import annotations

import pytest

from quantmatrix.errors import ArtifactError
from quantmatrix.hardware import fingerprint
from quantmatrix.records import Manifest
from quantmatrix.store import Store, artifact_key, now_iso


def _manifest() -> Manifest:
    return Manifest(
        key="",
        builder="b",
        variant="v",
        model="m",
        format="onnx",
        precision="int8",
        task="text-classification",
        environment=fingerprint(),
        created=now_iso(),
    )


def _writer(calls: list[int]):
    def produce(out):
        calls.append(1)
        (out / "model.onnx").write_bytes(b"x" * 100)
        return _manifest()

    return produce


def test_key_is_stable_and_sensitive():
    k = artifact_key("v", "b", {"a": 1, "b": 2}, {"source": "s"}, "code1")
    assert k == artifact_key("v", "b", {"b": 2, "a": 1}, {"source": "s"}, "code1")
    assert k.startswith("v-")
    assert k != artifact_key("v", "b", {"a": 1, "b": 3}, {"source": "s"}, "code1")
    assert k != artifact_key("v", "b", {"a": 1, "b": 2}, {"source": "t"}, "code1")
    assert k != artifact_key("v", "b", {"a": 1, "b": 2}, {"source": "s"}, "code2")


def test_complete_artefact_is_reused(tmp_path):
    store, calls = Store(tmp_path), []
    m1 = store.build("k1", _writer(calls))
    m2 = store.build("k1", _writer(calls))
    assert len(calls) == 1 and m1 == m2
    assert [f.path for f in m1.files] == ["model.onnx"] and m1.files[0].size == 100


def test_partial_artefact_is_rebuilt(tmp_path):
    store, calls = Store(tmp_path), []
    store.build("k1", _writer(calls))
    (tmp_path / "k1" / "model.onnx").write_bytes(b"x" * 10)  # truncated, as by a crash mid-copy
    assert store.lookup("k1") is None
    with pytest.raises(ArtifactError, match=r"model\.onnx has 10 bytes, manifest says 100"):
        store.load("k1")
    store.build("k1", _writer(calls))
    assert len(calls) == 2 and store.lookup("k1", verify=True) is not None


def test_tampered_file_fails_verification(tmp_path):
    store = Store(tmp_path)
    store.build("k1", _writer([]))
    (tmp_path / "k1" / "model.onnx").write_bytes(b"y" * 100)
    assert store.lookup("k1") is not None  # size check only
    with pytest.raises(ArtifactError, match="sha256 does not match"):
        store.load("k1", verify=True)


def test_crash_inside_builder_leaves_nothing(tmp_path):
    store = Store(tmp_path)

    def boom(out):
        (out / "half.bin").write_bytes(b"1")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        store.build("k1", boom)
    assert not (tmp_path / "k1").exists() and not list(tmp_path.glob(".tmp-*"))


def test_leftover_temp_and_scratch_dirs_are_cleaned(tmp_path):
    """A killed build leaves its temp directory and its scratch working directory; both go, by key."""
    (tmp_path / ".tmp-k1-123").mkdir(parents=True)
    (tmp_path / ".scratch-k1-ab_c9").mkdir(parents=True)
    assert Store(tmp_path).clean_partials() == [tmp_path / ".scratch-k1-ab_c9", tmp_path / ".tmp-k1-123"]


def test_manifest_without_files_dir_is_missing(tmp_path):
    (tmp_path / "k2").mkdir()
    with pytest.raises(ArtifactError, match=r"manifest\.json: file not found"):
        Store(tmp_path).load("k2")


def test_builder_code_versions_follow_build_code_not_record_types(tmp_path, repo):
    """Editing a builder's helper module rebuilds its artefacts; an additive change to the record types doesn't."""
    import shutil

    import quantmatrix.plan

    # conftest caches code versions for the session; this test needs the real, uncached function.
    _code_version = getattr(quantmatrix.plan._code_version, "__wrapped__", quantmatrix.plan._code_version)
    for rel in ("builders", "quantmatrix"):
        shutil.copytree(repo / rel, tmp_path / rel, ignore=shutil.ignore_patterns("__pycache__", "datasets"))
    before = _code_version("ort-int8-dynamic", tmp_path)
    with (tmp_path / "quantmatrix" / "records.py").open("a") as f:
        f.write("\n# a new optional field somewhere\n")
    assert _code_version("ort-int8-dynamic", tmp_path) == before
    # The matrix parser and the store hand builders only values the key already hashes.
    for name in ("spec", "store", "plan", "hardware"):
        with (tmp_path / "quantmatrix" / f"{name}.py").open("a") as f:
            f.write("\n# a refactor\n")
    assert _code_version("ort-int8-dynamic", tmp_path) == before
    with (tmp_path / "builders" / "_onnx.py").open("a") as f:
        f.write("\n# a change to the export helpers\n")
    assert _code_version("ort-int8-dynamic", tmp_path) != before


def _uncached_code_version():
    import quantmatrix.plan

    # conftest caches code versions for the session; these tests need the real, uncached function.
    return getattr(quantmatrix.plan._code_version, "__wrapped__", quantmatrix.plan._code_version)


def test_code_version_follows_imports_transitively(tmp_path, repo):
    """The bug this fixes: torch-int8-dynamic-lm reaches builders/_onnx.py only through _onnx_lm.py."""
    import shutil

    _code_version = _uncached_code_version()
    for rel in ("builders", "quantmatrix"):
        shutil.copytree(repo / rel, tmp_path / rel, ignore=shutil.ignore_patterns("__pycache__", "datasets"))
    before = {b: _code_version(b, tmp_path) for b in ("torch-int8-dynamic-lm", "reference", "onnx-fp32")}
    with (tmp_path / "builders" / "_onnx_lm.py").open("a") as f:
        f.write("\n# a causal-LM export helper changed\n")
    after = {b: _code_version(b, tmp_path) for b in before}
    assert after["torch-int8-dynamic-lm"] != before["torch-int8-dynamic-lm"]
    assert after["reference"] == before["reference"] and after["onnx-fp32"] == before["onnx-fp32"]
    with (tmp_path / "builders" / "_onnx.py").open("a") as f:
        f.write("\n# an ONNX helper two levels below torch-int8-dynamic-lm changed\n")
    assert _code_version("torch-int8-dynamic-lm", tmp_path) != after["torch-int8-dynamic-lm"]
    assert _code_version("reference", tmp_path) == before["reference"]


def test_code_version_hashes_a_helper_two_levels_down_and_nothing_unimported(tmp_path):
    from quantmatrix.plan import build_code

    _code_version = _uncached_code_version()
    files = {
        "builders/__init__.py": "",
        "builders/probe.py": "from helpers import mid\n\ndef build():\n    return mid.run()\n",
        "helpers/__init__.py": "",
        # A relative import inside a function: found by reading the code, not by running it.
        "helpers/mid.py": "def run():\n    from .deep import value\n\n    return value\n",
        "helpers/deep.py": "value = 1\n",
        "helpers/unused.py": "value = 2\n",
        "notapackage/deep.py": "value = 3\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    hashed = {p.relative_to(tmp_path).as_posix() for p in build_code("probe", tmp_path)}
    assert hashed == {"builders/__init__.py", "builders/probe.py", "helpers/__init__.py", "helpers/mid.py",
                      "helpers/deep.py"}  # fmt: skip
    before = _code_version("probe", tmp_path)
    (tmp_path / "helpers" / "unused.py").write_text("value = 20\n")
    (tmp_path / "notapackage" / "deep.py").write_text("value = 30\n")
    assert _code_version("probe", tmp_path) == before
    (tmp_path / "helpers" / "deep.py").write_text("value = 10\n")
    assert _code_version("probe", tmp_path) != before
