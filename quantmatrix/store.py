"""The artefact store: `artifacts/<key>/` directories, content-addressed, built atomically.

A key hashes the builder, its params, its inputs' keys and the code version, so an unchanged job
reuses its artefact. A build writes into a hidden temp directory and is renamed into place only
after its manifest is written, so a crash leaves nothing that looks complete. One build of a key
runs at a time on everything sharing the store (a lock per key under `.locks/`); others wait, then
reuse it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from quantmatrix.errors import ArtifactError, RecordError
from quantmatrix.machine_lock import FileLock, lock_dir
from quantmatrix.records import FileEntry, Manifest, read_record, write_record

MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"
SCRATCH_PREFIX = ".scratch-"  # a build's working directory, beside its temp directory: .scratch-<key>-<random>


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def digest(value: Any) -> str:
    """A stable sha256 hex of any JSON-able value (dict order does not matter)."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def code_digest(paths: Iterable[Path]) -> str:
    """Hash of source files (sorted by path) so that a code change invalidates cached artefacts."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def artifact_key(
    variant: str,
    builder: str,
    params: Mapping[str, Any],
    inputs: Mapping[str, str],
    code_version: str,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """`<variant>-<16 hex>`: readable in a directory listing, unique by content."""
    body = {
        "builder": builder,
        "params": dict(params),
        "inputs": dict(inputs),
        "code": code_version,
        "extra": dict(extra or {}),
    }
    return f"{variant}-{digest(body)[:16]}"


def list_files(root: Path) -> list[FileEntry]:
    entries = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            entries.append(FileEntry(path=p.relative_to(root).as_posix(), sha256=sha256_file(p), size=p.stat().st_size))
    return entries


class Store:
    """`root/<key>/manifest.json` + files. Only `build` writes; everything else reads."""

    def __init__(self, root: Path, *, log: Callable[[str], None] | None = None) -> None:
        self.root = Path(root).resolve()
        self.log = log  # where a build announces that it waits for another process's build of its key

    def path(self, key: str) -> Path:
        return self.root / key

    def lookup(self, key: str, *, verify: bool = False) -> Manifest | None:
        """The manifest of a complete, successful artefact, or None when it must be (re)built."""
        try:
            return self.load(key, verify=verify)
        except ArtifactError:
            return None

    def load(self, key: str, *, verify: bool = True) -> Manifest:
        """Load `key`'s manifest and check its files; raise ArtifactError naming what is wrong."""
        d = self.path(key)
        if not d.is_dir():
            raise ArtifactError(f"artefact {key}: not found under {self.root}")
        try:
            manifest = read_record(Manifest, d / MANIFEST)
        except RecordError as e:
            raise ArtifactError(f"artefact {key}: {e}") from None
        if manifest.status != "ok":
            raise ArtifactError(f"artefact {key}: build {manifest.status}: {manifest.reason}")
        self.check_files(d, manifest, verify=verify)
        return manifest

    @staticmethod
    def check_files(d: Path, manifest: Manifest, *, verify: bool) -> None:
        for entry in manifest.files:
            p = d / entry.path
            if not p.is_file():
                raise ArtifactError(f"artefact {manifest.key}: file {entry.path} is missing")
            if p.stat().st_size != entry.size:
                raise ArtifactError(
                    f"artefact {manifest.key}: file {entry.path} has {p.stat().st_size} bytes, "
                    f"manifest says {entry.size} (partial or modified)"
                )
            if verify and sha256_file(p) != entry.sha256:
                raise ArtifactError(f"artefact {manifest.key}: file {entry.path} sha256 does not match manifest")

    def build_lock(self, key: str) -> FileLock:
        """Held by whoever builds `key` (and by whoever cleans its temp directories): one build at a time."""
        return FileLock(lock_dir(self.root) / f"build-{key}.lock", f"build of {key}")

    def claim(self, key: str) -> FileLock:
        """Held by a run's orchestrator while its build job for `key` runs, so a second run waits for the
        first's job (and says so) instead of launching its own. A different file from `build_lock`: the
        job it launches takes that one."""
        return FileLock(lock_dir(self.root) / f"claim-{key}.lock", f"build of {key} by another run")

    def build(
        self,
        key: str,
        fn: Callable[[Path], Manifest],
        *,
        force: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> Manifest:
        """Run `fn(tmpdir)` unless a complete artefact exists; `fn` returns the manifest to finalise.

        Another process building the same key is waited for (announced through `log`), and its
        artefact reused. The manifest's files, key and build time are filled in here. A failure
        inside `fn` leaves no directory under `key`; the caller records it.
        """
        if not force and (found := self.lookup(key)) is not None:
            return found
        log = log or self.log
        with self.build_lock(key).hold(log=log) as waited:
            if not force and (found := self.lookup(key)) is not None:
                if log is not None:
                    log(f"[reused] {key}: built by another process while this one waited {waited:.0f}s")
                return found
            return self._build_locked(key, fn)

    def _build_locked(self, key: str, fn: Callable[[Path], Manifest]) -> Manifest:
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(key)
        tmp = self.root / f"{TMP_PREFIX}{key}-{time.time_ns()}"
        tmp.mkdir()
        t0 = time.perf_counter()
        try:
            manifest = fn(tmp)
            manifest.key = key
            manifest.files = list_files(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        manifest.build_seconds = manifest.build_seconds or round(time.perf_counter() - t0, 3)
        write_record(manifest, tmp / MANIFEST)
        if final.exists():  # a partial or failed earlier attempt
            shutil.rmtree(final)
        tmp.rename(final)
        return manifest

    def record_failure(self, manifest: Manifest) -> bool:
        """Keep a failed/skipped build's manifest (no files) so runs can report why; False (nothing
        written) when a complete artefact is there, built meanwhile by another process."""
        with self.build_lock(manifest.key).hold():
            if self.lookup(manifest.key) is not None:
                return False
            final = self.path(manifest.key)
            if final.exists():
                shutil.rmtree(final)
            final.mkdir(parents=True)
            write_record(manifest, final / MANIFEST)
            return True

    def read_any(self, key: str) -> Manifest | None:
        """The manifest whatever its status (ok, failed, skipped), without checking files."""
        try:
            return read_record(Manifest, self.path(key) / MANIFEST)
        except RecordError:
            return None

    def clean_partials(self) -> list[Path]:
        """Remove temp and scratch directories of builds whose owner is gone; return what was removed.

        A build holds its key's lock for as long as its temp directory exists, so a directory whose
        key's lock can be taken belongs to a process that died (killed, crashed, out of memory); one
        whose lock is held is a live build, maybe another run's or another container's, and stays.
        """
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        leftovers = [(p, prefix) for prefix in (TMP_PREFIX, SCRATCH_PREFIX) for p in self.root.glob(f"{prefix}*")]
        for p, prefix in sorted(leftovers):
            key = p.name[len(prefix) :].rpartition("-")[0]
            lock = self.build_lock(key)
            if not key or not lock.try_acquire():
                continue
            try:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
            finally:
                lock.release()
        return removed

    def size_bytes(self, key: str) -> int:
        m = self.read_any(key)
        return sum(f.size for f in m.files) if m else 0
