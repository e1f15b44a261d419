"""Container images and the Docker launcher: the same job argv, run in `docker run --rm`.

Image tags are content hashes (Dockerfile + lock + project code), so an unchanged image is found
by tag and never rebuilt. Runner and builder containers get no network, a read-only root, a tmpfs
/tmp, no capabilities and the caller's uid/gid; CPU set and thread counts are explicit.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import Console, Job, JobOutput, Launcher, exit_reason, failure_line, stream
from quantmatrix.errors import QuantmatrixError
from quantmatrix.hardware import LAUNCHED_AT_ENV, git_commit_date
from quantmatrix.hardware import git_commit as checkout_commit
from quantmatrix.progress import ProgressEvent, eta_seconds, format_duration
from quantmatrix.spec import Matrix

ROOT = Path(__file__).resolve().parent.parent
CODE_DIRS = ("quantmatrix", "builders", "runners", "bench")
DEVICES = ("cpu", "cuda")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_TIMEOUT_S = 3 * 3600  # a cold CUDA image build takes minutes; hours means it hangs


class DockerError(QuantmatrixError):
    """Docker is missing, unreachable, or an image could not be built."""


def docker_binary() -> str:
    """The docker client: $QUANTMATRIX_DOCKER, else `docker` on PATH (needs BuildKit for builds)."""
    chosen = os.environ.get("QUANTMATRIX_DOCKER") or shutil.which("docker")
    if not chosen:
        raise DockerError(
            "no docker client found: install Docker (https://docs.docker.com/engine/install/), "
            "set QUANTMATRIX_DOCKER=/path/to/docker, or use --runtime venv"
        )
    return chosen


def check_engine(docker: str) -> None:
    proc = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DockerError(
            f"no Docker engine reachable via {docker} ({detail}); start dockerd "
            "(containers/provision.sh does it on Debian) or use --runtime venv"
        )


def check_buildkit(docker: str) -> None:
    """Builds need BuildKit (bind/secret mounts). Docker >= 23 clients do BuildKit through the buildx
    plugin, and without it fail with a message about buildx; say what to do before starting a build."""
    proc = subprocess.run([docker, "version", "--format", "{{.Client.Version}}"], capture_output=True, text=True)
    major = proc.stdout.strip().split(".", 1)[0]
    if not major.isdigit() or int(major) < 23:
        return  # older clients (Debian's 20.10) have BuildKit built in
    if subprocess.run([docker, "buildx", "version"], capture_output=True).returncode != 0:
        raise DockerError(
            f"{docker} (client {proc.stdout.strip()}) has no buildx plugin, which it needs to build with BuildKit: "
            "install docker-buildx, or set QUANTMATRIX_DOCKER to a client with BuildKit built in "
            "(e.g. Debian's /usr/bin/docker)"
        )


def check_nvidia_runtime(docker: str) -> None:
    """benchmark-gpu needs an NVIDIA GPU and the NVIDIA container runtime; say which is missing."""
    if not shutil.which("nvidia-smi") or subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode:
        raise DockerError("no NVIDIA GPU: nvidia-smi is missing or sees no GPU (GPU cells need one)")
    proc = subprocess.run([docker, "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True)
    if "nvidia" not in proc.stdout:
        raise DockerError(
            "the NVIDIA container runtime is missing from Docker (install nvidia-container-toolkit and "
            "run `nvidia-ctk runtime configure --runtime=docker`), or use --runtime venv"
        )


def lock_file(device: str) -> Path:
    return ROOT / "containers" / f"{device}.lock.txt"


def dockerfile(device: str) -> Path:
    return ROOT / "containers" / f"{device}.Dockerfile"


def image_tag(device: str, build_args: Mapping[str, str] | None = None) -> str:
    """`quantmatrix-<device>:<12 hex>` over the Dockerfile, the lock, extra build args and every code file baked in."""
    h = hashlib.sha256()
    for k, v in sorted((build_args or {}).items()):
        h.update(f"--build-arg {k}={v}\n".encode())
    files = [dockerfile(device), lock_file(device)]
    for d in CODE_DIRS:
        files += sorted(p for p in (ROOT / d).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for p in files:
        h.update(str(p.relative_to(ROOT)).encode())
        h.update(p.read_bytes())
    return f"quantmatrix-{device}:{h.hexdigest()[:12]}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def git_commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def image_exists(docker: str, tag: str) -> bool:
    return subprocess.run([docker, "image", "inspect", tag], capture_output=True).returncode == 0


def build_command(
    docker: str,
    device: str,
    tag: str,
    *,
    torch_index_url: str | None,
    ca_bundle: Path | None,
    build_args: Mapping[str, str] | None = None,
) -> list[str]:
    cmd = [docker, "build", "-f", str(dockerfile(device)), "-t", tag, "--progress=plain"]
    cmd += ["--build-arg", f"GIT_COMMIT={git_commit()}", "--build-arg", f"LOCK_SHA256={sha256(lock_file(device))}"]
    if torch_index_url is not None:
        cmd += ["--build-arg", f"TORCH_INDEX_URL={torch_index_url}"]
    if base := os.environ.get("QUANTMATRIX_BASE_IMAGE"):
        cmd += ["--build-arg", f"BASE_IMAGE={base}"]
    for k, v in sorted((build_args or {}).items()):
        cmd += ["--build-arg", f"{k}={v}"]
    if ca_bundle is not None and ca_bundle.is_file():
        cmd += ["--secret", f"id=ca,src={ca_bundle}"]
    return [*cmd, str(ROOT)]


def ensure_image(
    device: str,
    *,
    torch_index_url: str | None = None,
    wheelhouse: Path | None = None,
    ca_bundle: Path | None = CA_BUNDLE,
    build_args: Mapping[str, str] | None = None,
    log: Callable[[str], None] = print,
    status: Callable[[str], None] | None = None,
    log_path: Path | None = None,
) -> str:
    """The image's tag, building it first unless an image with that tag exists.

    The build's output goes to `log_path` (default build/logs/image-<device>.log); `status` gets a
    line per build step (`image build: [runtime 3/8] COPY ... step 9/14, ETA 40s`).
    """
    docker = docker_binary()
    check_engine(docker)
    tag = image_tag(device, build_args)
    if image_exists(docker, tag):
        log(f"[cached] image {tag}")
        return tag
    check_buildkit(docker)
    house = ROOT / "wheelhouse"
    house.mkdir(exist_ok=True)  # bind-mounted into the build; may stay empty
    if wheelhouse is not None:
        for wheel in sorted(Path(wheelhouse).glob("torch-*.whl")):
            if not (house / wheel.name).exists():
                shutil.copy2(wheel, house / wheel.name)
                log(f"wheelhouse: {wheel.name}")
    cmd = build_command(
        docker, device, tag, torch_index_url=torch_index_url, ca_bundle=ca_bundle, build_args=build_args
    )
    log_path = log_path or ROOT / "build" / "logs" / f"image-{device}.log"
    log(f"[build ] image {tag} (log: {log_path}): {' '.join(cmd)}")
    steps = BuildSteps()
    output = JobOutput(log_path, on_progress=status, parse=steps.feed)
    try:
        code, text = stream(cmd, timeout=BUILD_TIMEOUT_S, env={**os.environ, "DOCKER_BUILDKIT": "1"}, output=output)
    finally:
        output.close()
    if code != 0:
        raise DockerError(
            f"building {tag} failed ({exit_reason(code, BUILD_TIMEOUT_S)}: {failure_line(text)[:300]}); the whole "
            f"build log is in {log_path}. Without network to the PyTorch index pass --wheelhouse DIR holding "
            "torch-*+cpu wheels"
        )
    log(f"[built ] image {tag} in {format_duration(steps.elapsed())}")
    return tag


# BuildKit's plain output: `#7 [build 2/6] RUN pip install ...` starts step 7; `#7 DONE 3.1s` or
# `#7 CACHED` ends it. Docker 20.10 has no machine-readable progress format, so this reads the plain one.
_STEP_START = re.compile(r"^#(\d+) \[(?:([\w.-]+) )?(\d+)/(\d+)\] (.*)$")
_STEP_END = re.compile(r"^#(\d+) (?:DONE|CACHED)\b")


class BuildSteps:
    """Counts a BuildKit build's steps (per stage, as `[stage n/m]` numbers them, less the FROM) from its plain
    output."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.totals: dict[str, int] = {}  # stage -> its step count after FROM
        self.started: dict[str, str] = {}  # BuildKit vertex id -> `[stage n/m] instruction`
        self.finished: set[str] = set()
        self.current = ""

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def feed(self, line: str) -> ProgressEvent | None:
        """The build's progress after `line`, or None when the line says nothing about steps."""
        if m := _STEP_START.match(line):
            vertex, stage, n, of, instruction = m.groups()
            if instruction.startswith("FROM "):
                # Not counted: stages with the same base share one FROM vertex, named after any one of
                # them (even a stage of another build), so it cannot be attributed.
                return None
            self.totals[stage or ""] = int(of) - 1
            self.started[vertex] = f"[{stage + ' ' if stage else ''}{n}/{of}] {instruction}"
            self.current = self.started[vertex]
        elif (m := _STEP_END.match(line)) and m[1] in self.started:
            self.finished.add(m[1])
        else:
            return None
        done, total, elapsed = len(self.finished), sum(self.totals.values()), self.elapsed()
        note = self.current if len(self.current) <= 60 else self.current[:57] + "..."
        return ProgressEvent(
            what="image build", done=done, total=total, elapsed_s=round(elapsed, 3),
            eta_s=eta_seconds(done, total, elapsed), unit="step", note=note,
        )  # fmt: skip


@dataclass
class DockerLauncher(Launcher):
    """Runs a job's argv as `docker run --rm IMAGE python <argv>` with the matrix, artefacts and results mounted."""

    image: str
    matrix: Path
    artifacts: Path
    results: Path
    docker: str = "docker"
    cpuset: str | None = None
    memory: str | None = None
    gpus: bool = False
    data: Sequence[Path] = ()  # local dataset files/directories the matrix names
    data_base: Path | None = None  # the directory the matrix's relative data paths start from
    name: str = "docker"

    # Paths inside the container; plan() writes them into every job's argv.
    MATRIX_DIR = "/work/matrix"
    ARTIFACTS = "/work/artifacts"
    RESULTS = "/work/results"

    # The image's own non-root user: used when the caller is root, so no container runs as root.
    IMAGE_UID = 10001

    def __post_init__(self) -> None:
        # The checkout's commit, its date and whether it is dirty, passed at `docker run`: an image is
        # reused across commits that leave its content alone, so what it baked in at build time can be stale.
        commit, dirty = checkout_commit()
        self.provenance: list[str] = []
        if commit:
            self.provenance += ["-e", f"QUANTMATRIX_GIT_COMMIT={commit}"]
            if date := git_commit_date(commit):
                self.provenance += ["-e", f"QUANTMATRIX_GIT_COMMIT_DATE={date}"]
            if dirty is not None:
                self.provenance += ["-e", f"QUANTMATRIX_GIT_DIRTY={int(dirty)}"]
        for d in (self.artifacts, self.results):
            d.mkdir(parents=True, exist_ok=True)
            if os.getuid() == 0:  # let the image's user write there (root on the host still can)
                for path in [d, *d.rglob("*")]:
                    os.chown(path, self.IMAGE_UID, self.IMAGE_UID, follow_symlinks=False)

    def user(self) -> str:
        """The caller's uid/gid (files on the mounts stay theirs), or the image's user for root."""
        uid = os.getuid()
        return f"{self.IMAGE_UID}:{self.IMAGE_UID}" if uid == 0 else f"{uid}:{os.getgid()}"

    def describe(self) -> str:
        return f"docker ({self.image}, user {self.user()})"

    def read_only_mounts(self) -> list[str]:
        """The matrix file and the local data it names, each at the path the matrix expects.

        Mounting single files (not the matrix's directory) keeps the rest of the checkout out of
        the container and works whatever the directory's permissions.
        """
        base = self.data_base or self.matrix.parent
        mounts = ["-v", f"{self.matrix}:{self.MATRIX_DIR}/matrix.toml:ro"]
        for path in self.data:
            inside = f"{self.MATRIX_DIR}/{path.relative_to(base)}" if path.is_relative_to(base) else str(path)
            mounts += ["-v", f"{path}:{inside}:ro"]
        return mounts

    def command(self, job: Job, container: str) -> list[str]:
        cmd = [
            self.docker, "run", "--name", container,
            "--user", self.user(),
            "--network", "none",
            "--read-only", "--tmpfs", "/tmp:rw,exec,size=4g",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--pids-limit", "512",
            *self.read_only_mounts(),
            "-v", f"{self.artifacts}:{self.ARTIFACTS}",
            "-v", f"{self.results}:{self.RESULTS}",
            "-e", "QUANTMATRIX_RUNTIME=docker", "-e", f"QUANTMATRIX_IMAGE={self.image}", "-e", "PYTHONUNBUFFERED=1",
            "-e", f"{LAUNCHED_AT_ENV}={time.time()!r}",
            *self.provenance,
        ]  # fmt: skip
        if self.cpuset:
            cmd += ["--cpuset-cpus", self.cpuset]
        if self.memory:
            cmd += ["--memory", self.memory, "--memory-swap", self.memory]
        if self.gpus:
            cmd += ["--gpus", "all"]
        return [*cmd, self.image, *job.argv]

    def launch(self, job: Job, timeout: float, output: JobOutput | None = None) -> tuple[int, str]:
        # Not --rm: the container is inspected after it exits (was it the OOM killer?), then removed.
        # The client streams the container's output as it comes, so progress events arrive live.
        container = f"qm-{uuid.uuid4().hex[:12]}"
        try:
            code, text = stream(self.command(job, container), timeout=timeout, output=output)
        except BaseException:  # Ctrl-C: never leave a container running behind us
            self._remove(container)
            raise
        if code == 124:
            self._remove(container)
            return code, text
        if code == 137:
            state = subprocess.run(
                [self.docker, "inspect", "--format", "{{.State.OOMKilled}}", container], capture_output=True, text=True
            )
            if state.stdout.strip() != "true":
                code = -9  # killed by someone (docker kill, Ctrl-C elsewhere), not by the OOM killer
        self._remove(container)
        return code, text

    def _remove(self, container: str) -> None:
        subprocess.run([self.docker, "rm", "-f", container], capture_output=True)


def container_paths(matrix: Path) -> tuple[str, str, str]:
    """(matrix, artifacts, results) arguments as the container sees them."""
    return (f"{DockerLauncher.MATRIX_DIR}/matrix.toml", DockerLauncher.ARTIFACTS, DockerLauncher.RESULTS)


def parse_devices(args: Sequence[str]) -> list[str]:
    devices = list(args) or ["cpu"]
    for d in devices:
        if d not in DEVICES:
            raise DockerError(f"unknown image {d!r}: expected one of {', '.join(DEVICES)}")
    return devices


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bench.docker [cpu] [cuda] [--wheelhouse DIR] [--torch-index-url URL]`: build images."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m bench.docker", description="Build quantmatrix images.")
    ap.add_argument("devices", nargs="*", default=["cpu"])
    ap.add_argument("--wheelhouse", type=Path, default=None, help="directory with torch-*+cpu wheels")
    ap.add_argument("--torch-index-url", default=None, help="PyTorch wheel index ('' for none)")
    ap.add_argument(
        "--build-arg", action="append", default=[], metavar="KEY=VALUE",
        help="passed to docker build and hashed into the tag, e.g. TENSORRT_REQUIREMENT= (cuda image without TensorRT)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    console = Console()
    try:
        extra = dict(a.split("=", 1) if "=" in a else (a, "") for a in args.build_arg)
        for device in parse_devices(args.devices):
            tag = ensure_image(
                device, torch_index_url=args.torch_index_url, wheelhouse=args.wheelhouse,
                log=console.line, status=console.status, build_args=extra,
            )  # fmt: skip
            print(f"{device}: {tag}")
    except QuantmatrixError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def local_data(matrix: Matrix) -> list[Path]:
    """Dataset files and directories on this machine that the matrix's datasets read."""
    paths = []
    for ds in matrix.datasets.values():
        if ds.kind in ("file", "hf"):
            p = Path(ds.location)
            p = p if p.is_absolute() else matrix.path.parent / p
            if p.exists():
                paths.append(p.resolve())
    return paths
