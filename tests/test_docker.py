"""The Docker runtime for real: jobs in hardened containers, a container killed mid-run, resume.

Needs a Docker engine and the CPU image (built here if its tag is new: minutes). `.ci/run`
provisions the engine and runs these with `nox -s tests -- -m docker`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.docker import docker_binary, ensure_image
from quantmatrix.errors import QuantmatrixError
from quantmatrix.records import Result, read_record

MATRIX = """
[datasets.headlines9]
source = "bundled:headlines9"

[models.tiny]
source = "random:bert-tiny"
dataset = "headlines9"
max_length = 32

[models.tiny.finetune]
method = "full"
epochs = 1
max_train_examples = 300

[runners.torch-eager]
backend = "torch"
params = { threads = 1 }

[runners.ort-cpu]
backend = "onnxruntime"
params = { threads = 1 }

[variants.onnx-fp32]
builder = "onnx-fp32"

[profiles.t]
models = ["tiny"]
variants = ["onnx-fp32"]
runners = ["torch-eager", "ort-cpu"]

[profiles.t.measure]
batch_sizes = [1]
seq_modes = ["padded", "natural"]
padded_length = 32
warmup = 2
min_iterations = 5
min_seconds = 4.0
eval_examples = 100
"""


def _engine() -> str | None:
    try:
        docker = docker_binary()
    except QuantmatrixError:
        return None
    ok = subprocess.run([docker, "info"], capture_output=True).returncode == 0
    return docker if ok else None


@pytest.fixture(scope="module")
def image() -> str:
    if _engine() is None:
        pytest.skip("no Docker engine reachable (containers/provision.sh starts one on Debian)")
    wheels = Path("/opt/wheels")
    return ensure_image(
        "cpu",
        wheelhouse=wheels if wheels.is_dir() else None,
        torch_index_url=os.environ.get("QUANTMATRIX_TORCH_INDEX_URL"),
    )


def _bench(work: Path, *extra: str) -> subprocess.Popen[str]:
    cmd = [
        sys.executable, "-m", "bench", "--matrix", str(work / "matrix.toml"), "--profile", "t",
        "--runtime", "docker", "--artifacts", str(work / "artifacts"), "--results", str(work / "results"),
        "--run-id", "k", *extra,
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _containers(docker: str) -> list[tuple[str, str]]:
    out = subprocess.run(
        [docker, "ps", "--no-trunc", "--format", "{{.Names}}\t{{.Command}}"], capture_output=True, text=True
    ).stdout
    return [tuple(line.split("\t", 1)) for line in out.splitlines() if line.startswith("qm-")]  # type: ignore[misc]


@pytest.mark.docker
@pytest.mark.slow
def test_killed_container_is_recorded_and_a_rerun_resumes(image, tmp_path):
    docker = _engine()
    assert docker
    (tmp_path / "matrix.toml").write_text(MATRIX)
    proc = _bench(tmp_path)
    victim = None
    deadline = time.monotonic() + 600
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        for name, command in _containers(docker):
            if "runners" in command and "ort-cpu" in command:
                time.sleep(3)  # let it load and start timing
                subprocess.run([docker, "kill", name], capture_output=True)
                victim = name
        time.sleep(0.3)
    out, _ = proc.communicate(timeout=600)
    assert victim, f"never saw the ort-cpu run container:\n{out}"
    assert proc.returncode == 1, out
    assert "killed by SIGKILL" in out
    assert not [n for n, _ in _containers(docker)], "a container was left running"

    results = {p.name: read_record(Result, p) for p in (tmp_path / "results" / "k").glob("*.json")}
    killed = [r for r in results.values() if r.cell.runner == "ort-cpu"]
    assert killed and all(r.status == "failed" and "killed" in (r.reason or "") for r in killed)
    assert all(r.status == "ok" for r in results.values() if r.cell.runner == "torch-eager")
    ok_stamps = {n: (tmp_path / "results" / "k" / n).stat().st_mtime_ns for n, r in results.items() if r.status == "ok"}
    for r in results.values():
        if r.status == "ok":
            assert r.fingerprint.runtime == "docker" and r.fingerprint.image == image

    # Rerun: builds and finished cells are reused; only the killed job runs again.
    proc = _bench(tmp_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert out.count("cached") >= 3 and "cells: 4 planned; results 4 ok" in out
    for name, stamp in ok_stamps.items():
        assert (tmp_path / "results" / "k" / name).stat().st_mtime_ns == stamp, f"{name} was re-measured"
    shutil.rmtree(tmp_path / "artifacts", ignore_errors=True)


def test_no_engine_gives_one_clear_message(tmp_path):
    client = shutil.which("docker") or os.environ.get("QUANTMATRIX_DOCKER")
    if not client:
        pytest.skip("no docker client installed")
    (tmp_path / "matrix.toml").write_text(MATRIX)
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-such.sock", "QUANTMATRIX_DOCKER": client}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--matrix", str(tmp_path / "matrix.toml"), "--profile", "t",
         "--runtime", "docker", "--artifacts", str(tmp_path / "a"), "--results", str(tmp_path / "r")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no Docker engine reachable"), proc.stderr


def test_a_client_without_buildkit_is_named_before_building(tmp_path):
    """A Docker >= 23 client without the buildx plugin cannot build with BuildKit: one message, no build."""
    from bench.docker import DockerError, check_buildkit

    client = tmp_path / "docker"
    client.write_text('#!/bin/sh\ncase "$1" in version) echo 28.2.2;; buildx) exit 1;; esac\n')
    client.chmod(0o755)
    with pytest.raises(DockerError, match=r"has no buildx plugin.*QUANTMATRIX_DOCKER"):
        check_buildkit(str(client))
    client.write_text('#!/bin/sh\ncase "$1" in version) echo 20.10.24;; buildx) exit 1;; esac\n')
    check_buildkit(str(client))  # BuildKit built in: fine
