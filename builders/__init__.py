"""Builders turn inputs into one artefact directory with a manifest; they never time or score.

A builder is one module here, named after it (`ort-int8-dynamic` -> `ort_int8_dynamic.py`), with one
params dataclass and one function registered with `@builder(...)`. Modules import torch/onnx lazily.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quantmatrix.discovery import Registry
from quantmatrix.errors import ArtifactError, QuantmatrixError
from quantmatrix.hardware import fingerprint
from quantmatrix.plan import REFERENCE, BuildJob, build_jobs
from quantmatrix.records import Manifest
from quantmatrix.spec import Matrix, ModelSpec, VariantSpec, parse_params
from quantmatrix.store import SCRATCH_PREFIX, Store, now_iso


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link (or copy, across file systems) every file under `src` into `dst`."""
    for path in sorted(src.rglob("*")):
        if path.is_file():
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)


@dataclass(frozen=True)
class Input:
    manifest: Manifest
    path: Path
    role: str = "source"  # its key in BuildContext.inputs, so a refusal names the input at fault

    def file(self, name: str | None = None) -> Path:
        rel = name or self.manifest.entry
        if rel is None:
            raise ArtifactError(f"artefact {self.manifest.key}: manifest names no entry file")
        return self.path / rel

    def require(self, what: str, *, format: str, task: str | None = None, precision: str | None = None) -> None:
        """Fail the build unless this input is a `format` artefact (of `task`, in `precision`); `what` says what
        the builder does."""
        m = self.manifest
        wrong_task = task is not None and m.task != task
        if m.format != format or wrong_task or (precision is not None and m.precision != precision):
            raise QuantmatrixError(f"{what}; {self.role} {m.key} is {m.precision} {m.format} {m.task}")


@dataclass(frozen=True)
class BuildContext:
    """Everything a builder may read; it writes only under `out`."""

    out: Path
    matrix: Matrix
    model: ModelSpec
    variant: VariantSpec
    inputs: Mapping[str, Input]
    log: Callable[[str], None] = print

    @property
    def source(self) -> Input:
        return self.inputs["source"]

    @property
    def reference(self) -> Input:
        return self.inputs["reference"]

    @functools.cached_property
    def data(self) -> Any:
        from quantmatrix.data import load_dataset

        return load_dataset(self.matrix.dataset_for(self.model), base_dir=self.matrix.path.parent)

    def manifest(self, *, format: str, precision: str, params: Any = None, **fields: Any) -> Manifest:
        """A manifest pre-filled from the context and the source artefact (label map, tokenizer, I/O)."""
        src = self.inputs.get("source")
        base: dict[str, Any] = {}
        if src is not None:
            m = src.manifest
            base = {
                "id2label": m.id2label,
                "tokenizer": m.tokenizer,
                "io_inputs": m.io_inputs,
                "io_outputs": m.io_outputs,
                "random_init": m.random_init,
                "task": m.task,
            }
        base.update(fields)
        base.setdefault("task", self.model.task)
        return Manifest(
            key="",
            builder=self.variant.builder,
            variant=self.variant.name,
            model=self.model.name,
            params=asdict(params) if params is not None else dict(self.variant.params),
            inputs={role: i.manifest.key for role, i in self.inputs.items()},
            format=format,
            precision=precision,
            environment=fingerprint(),
            created=now_iso(),
            **base,
        )


@dataclass(frozen=True)
class BuilderInfo:
    name: str
    params: type
    output_format: str
    device: str
    fn: Callable[[BuildContext, Any], Manifest] = field(repr=False)


_BUILDERS: Registry[BuilderInfo] = Registry("builder", __name__)


def builder(name: str, *, params: type, output_format: str, device: str = "cpu") -> Callable[..., Any]:
    """Register a build function under `name` (must match its module's file name)."""

    def info(fn: Callable[[BuildContext, Any], Manifest]) -> BuilderInfo:
        return BuilderInfo(name=name, params=params, output_format=output_format, device=device, fn=fn)

    return _BUILDERS.register(name, info)


def registry() -> Mapping[str, BuilderInfo]:
    """All builders, by importing every module in this package (cheap: heavy imports are lazy)."""
    return _BUILDERS.discover()


def run_job(
    matrix: Matrix, job: BuildJob, store: Store, *, log: Callable[[str], None] = print, force: bool = False
) -> Manifest:
    """Build one job whose inputs exist; a failure is recorded as a `failed` manifest and re-raised."""
    info = registry()[job.builder]
    model = matrix.models[job.model]
    variant = (
        VariantSpec(name=REFERENCE, builder=REFERENCE, source="")
        if job.variant == REFERENCE
        else matrix.variants[job.variant]
    )
    params: Any = parse_params(info.params, variant.params, f"{matrix.path}: variants.{variant.name}.params")
    inputs = {}
    for role, key in job.inputs.items():
        try:
            inputs[role] = Input(manifest=store.load(key, verify=False), path=store.path(key), role=role)
        except ArtifactError as e:
            raise ArtifactError(f"{job.name}: input {role!r} is not available: {e}") from None

    def produce(out: Path) -> Manifest:
        ctx = BuildContext(out=out, matrix=matrix, model=model, variant=variant, inputs=inputs, log=log)
        t0 = time.perf_counter()
        # Some tools (ORT's shape inference and quantiser) drop temp files into the working
        # directory; give them a scratch one so nothing leaks into the user's checkout.
        # Named after the key, so a killed build's scratch is removed with its temp directory (clean_partials).
        scratch_dir = tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{job.key}-", dir=out.parent)
        with scratch_dir as scratch, contextlib.chdir(scratch):
            manifest = info.fn(ctx, params)
        manifest.build_seconds = round(time.perf_counter() - t0, 3)
        return manifest

    try:
        return store.build(job.key, produce, force=force)
    except Exception as e:
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        store.record_failure(
            Manifest(
                key=job.key,
                builder=job.builder,
                variant=job.variant,
                model=job.model,
                inputs=job.inputs,
                format="none",
                precision="n/a",
                task=model.task,
                status="failed",
                reason=reason,
                environment=fingerprint(),
                created=now_iso(),
                extra={"traceback": traceback.format_exc()[-4000:]},
            )
        )
        raise


def build_with_deps(
    matrix: Matrix,
    model: str,
    variants: tuple[str, ...],
    store: Store,
    *,
    log: Callable[[str], None] = print,
    force: bool = False,
    failures: dict[str, str] | None = None,
) -> dict[str, Manifest]:
    """Build the reference and `variants` (and what they start from) in-process, in order.

    With a `failures` dict, a failing build is recorded there (variant -> reason) and the others go
    on, except those that start from it; without one, the first failure is raised.
    """
    done: dict[str, Manifest] = {}
    for job in build_jobs(matrix, model, variants):
        missing = [d for d in job.deps if d not in done]
        if missing and failures is not None:
            failures[job.variant] = f"not built: needs {', '.join(missing)}, which failed"
            log(f"[skip  ] {job.name}: {failures[job.variant]}")
            continue
        cached = store.lookup(job.key)
        if cached is not None and not force:
            log(f"[cached] {job.name} ({job.key})")
            done[job.variant] = cached
            continue
        log(f"[build ] {job.name} ({job.key})")
        try:
            done[job.variant] = run_job(matrix, job, store, log=log, force=force)
        except Exception as e:
            if failures is None:
                raise
            failures[job.variant] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            log(f"[failed] {job.name}: {failures[job.variant]} (manifest in {store.path(job.key)})")
            continue
        log(f"[ done ] {job.name} in {done[job.variant].build_seconds:.1f}s")
    return done
