"""The docs and the README: generated tables are current, the front door stays small and true."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from quantmatrix.spec import load_matrix


def _make_docs(root: Path, repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(repo / "scripts" / "make_docs.py"), "--root", str(root), *args],
        capture_output=True,
        text=True,
        cwd=repo,
    )


def test_generated_docs_are_current(repo):
    proc = _make_docs(repo, repo, "--check")
    assert proc.returncode == 0, proc.stderr


def test_stale_docs_are_detected_and_rewritten(tmp_path, repo):
    for rel in ("matrix.toml", "README.md", "docs/matrix.md", "docs/variants.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(repo / rel, tmp_path / rel)
    # A default changed in matrix.toml's profiles shows up in the profile table; a hand edit of a
    # generated table is undone.
    matrix = tmp_path / "matrix.toml"
    matrix.write_text(matrix.read_text().replace("[profiles.smoke]", "[profiles.smoke2]").replace(
        "[profiles.smoke.measure]", "[profiles.smoke2.measure]"))  # fmt: skip
    doc = tmp_path / "docs" / "matrix.md"
    doc.write_text(doc.read_text().replace("| `warmup` | `10` |", "| `warmup` | `11` |"))
    proc = _make_docs(tmp_path, repo, "--check")
    assert proc.returncode == 1
    assert "docs/matrix.md" in proc.stderr and "README.md" in proc.stderr
    assert _make_docs(tmp_path, repo).returncode == 0
    assert _make_docs(tmp_path, repo, "--check").returncode == 0
    assert "| `warmup` | `10` |" in doc.read_text()
    assert "`smoke2`" in (tmp_path / "README.md").read_text()


def test_readme_is_a_front_door(repo):
    readme = (repo / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode()) < 8 * 1024
    for command in ("nox -s benchmark-cpu", "nox -s benchmark-gpu", "--runtime venv", "--wheelhouse"):
        assert command in readme
    # CI runs the README's test command (.ci/run); keep them the same.
    assert "nox -s tests" in readme and "nox -s tests" in (repo / ".ci" / "run").read_text()
    # Every profile of matrix.toml is named, and no other.
    names = set(re.findall(r"`([a-z0-9-]+)`", readme.split("<!-- generated: profile-names -->")[1].split("<!--")[0]))
    assert names == set(load_matrix(repo / "matrix.toml").profiles)


def test_flags_the_readme_names_exist(repo):
    readme = (repo / "README.md").read_text(encoding="utf-8")
    bench_cli = (repo / "bench" / "__main__.py").read_text(encoding="utf-8")
    for flag in sorted(set(re.findall(r"(--[a-z][a-z-]+)", readme))):
        if flag in ("--group", "--results"):  # pip's flag; the clean session's, checked below
            continue
        assert f'"{flag}"' in bench_cli, f"README names {flag}, which python -m bench does not take"


def test_doc_links_resolve(repo):
    for page in [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+\.md)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).is_file(), f"{page.name} links to missing {target}"


def test_dependency_groups_share_one_copy_of_each_pin(repo):
    """cpu and gpu include the shared pins; each requirement is pinned in one group only."""
    groups = tomllib.loads((repo / "pyproject.toml").read_text())["dependency-groups"]
    seen: dict[str, str] = {}
    for group, items in groups.items():
        if group == "lint":  # a separate, light venv: it repeats the core pins mypy's plugin needs
            continue
        for item in items:
            if isinstance(item, str):
                name = re.split(r"[=<>~!\[ ]", item, maxsplit=1)[0]
                assert name not in seen, f"{name} pinned in both {seen[name]} and {group}"
                seen[name] = group
    nox = pytest.importorskip("nox.project")
    pyproject = nox.load_toml(repo / "pyproject.toml")
    cpu, gpu = nox.dependency_groups(pyproject, "cpu"), nox.dependency_groups(pyproject, "gpu")
    assert "torch==2.13.0" in cpu and "torch==2.13.0" in gpu
    assert "onnxruntime==1.31.1" in cpu and "onnxruntime-gpu==1.31.1" in gpu
    assert not any(r.startswith("onnxruntime==") for r in gpu)  # same module as onnxruntime-gpu


def test_nox_clean_keeps_results_unless_asked(tmp_path, repo):
    """`nox -s clean` runs no virtualenv (python=False), so it runs here for real, on a copy."""
    shutil.copy(repo / "noxfile.py", tmp_path)
    shutil.copy(repo / "pyproject.toml", tmp_path)
    for name in ("artifacts", "site", "results"):
        (tmp_path / name / "x").mkdir(parents=True)

    def clean(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "nox", "-f", str(tmp_path / "noxfile.py"), "-s", "clean", *args]
        return subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)

    proc = clean()
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "site").exists()
    assert (tmp_path / "results" / "x").is_dir() and "kept results/" in proc.stderr
    assert clean("--", "--colour").returncode != 0 and (tmp_path / "results").exists()
    assert clean("--", "--results").returncode == 0
    assert not (tmp_path / "results").exists()


def test_hand_written_params_tables_hold_the_dataclass_defaults(repo):
    """docs/matrix.md's params tables for the sensitivity analysis and ort-int8-mixed keep hand-written
    meanings; their defaults must still be the dataclasses' own."""
    import importlib.util

    import builders
    import runners.analyses

    spec = importlib.util.spec_from_file_location("make_docs", repo / "scripts" / "make_docs.py")
    assert spec is not None and spec.loader is not None
    make_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_docs)
    text = (repo / "docs" / "matrix.md").read_text(encoding="utf-8")
    owners = {
        "## `[analyses.<name>]`": runners.analyses.registry()["sensitivity"].params,
        "## Mixed precision": builders.registry()["ort-int8-mixed"].params,
    }
    checked = 0
    for heading, kind in owners.items():
        section = text.split(heading, 1)[1].split("\n## ", 1)[0]
        table = section.split("| param | default | meaning |", 1)[1].split("\n\n", 1)[0]
        defaults = {f.name: f.default for f in dataclasses.fields(kind)}
        for row in table.strip().splitlines()[1:]:
            names_cell, default_cell = row.split(" | ")[:2]
            names = re.findall(r"`(\w+)`", names_cell)
            for name, shown in zip(names, default_cell.split(", "), strict=True):
                assert shown == make_docs.toml_value(defaults[name]), f"{heading}: {name} shown {shown}"
                checked += 1
    assert checked >= 15
