"""The plan: matrix profile -> build jobs with content keys, and the run cells that measure them.

Builders are found by file convention (`builders/<name with _>.py`), so keys can be computed —
and cached jobs skipped — without importing torch or any builder.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

from quantmatrix.errors import SpecError
from quantmatrix.spec import Matrix, MeasureSpec, ModelSpec
from quantmatrix.store import artifact_key, code_digest

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE = "reference"
# The builder of each task's implicit FP32 reference (the variant every other one starts from).
REFERENCE_BUILDERS = {"text-classification": "reference", "text-generation": "lm-reference"}
GENERATION = "text-generation"
CACHE_MODES = ("kv-cache", "no-cache")


def builder_module(builder: str, root: Path = REPO_ROOT) -> Path:
    return root / "builders" / f"{builder.replace('-', '_')}.py"


@dataclass(frozen=True)
class BuildJob:
    model: str
    variant: str
    builder: str
    key: str
    inputs: dict[str, str] = field(default_factory=dict)  # role -> artefact key
    deps: tuple[str, ...] = ()  # variant names this job needs built first

    @property
    def name(self) -> str:
        return f"build {self.model}/{self.variant}"


# Repo modules that are not build code: neither hashed into artefact keys nor followed for imports.
_NOT_BUILD_CODE = {
    # Record types: a new optional field changes no artefact, and a manifest an older builder wrote
    # still loads (migrated at load time, or fails its schema check, which rebuilds it). Hashing them
    # made every additive schema change rebuild every artefact, the fine-tuned reference included.
    "quantmatrix.records",
    "quantmatrix.errors",
    # The matrix, the plan and the store turn config into keys and typed params; everything they hand
    # a builder (variant params, model identity, dataset spec, input keys) is hashed into the key by
    # value, so their code would only rebuild every artefact on a refactor.
    "quantmatrix.spec",
    "quantmatrix.plan",
    "quantmatrix.store",
    # The environment fingerprint a manifest records; it never changes what a builder writes.
    "quantmatrix.hardware",
}
# Hashed for every builder: the framework it runs in and the loaders behind every context.
_FRAMEWORK = ("builders", "quantmatrix.hf", "quantmatrix.data")


def _module_file(root: Path, name: str) -> Path | None:
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported_names(path: Path, name: str) -> set[str]:
    """Every dotted name `path` (module `name`) imports, anywhere in it (lazy imports in functions too).

    `from a import b` yields `a` and `a.b`: b may be a submodule; names that are no module drop out later.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def build_code(builder: str, root: Path = REPO_ROOT) -> list[Path]:
    """The source files an artefact key hashes for `builder`: its module and every repo module it
    imports, transitively (a helper's helper too), by static analysis, less `_NOT_BUILD_CODE`.

    Importing `a.b.c` runs `a` and `a.b` first, so package `__init__`s count. Modules a builder does
    not import (another builder's helpers) stay out, so editing them rebuilds nothing here.
    """
    module = builder_module(builder, root)
    if not module.is_file():
        raise SpecError(f"builder {builder!r}: no module {module.relative_to(root)}")
    packages = {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}
    todo = [f"builders.{module.stem}", *_FRAMEWORK]
    found: dict[str, Path] = {}
    while todo:
        name = todo.pop()
        if name in found or name in _NOT_BUILD_CODE or name.split(".")[0] not in packages:
            continue
        path = _module_file(root, name)
        if path is None:  # a class or function imported from a module, not a module
            continue
        found[name] = path
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += _imported_names(path, name)
    return sorted(set(found.values()))


def _code_version(builder: str, root: Path) -> str:
    return code_digest(build_code(builder, root))


def reference_builder(model: ModelSpec) -> str:
    return REFERENCE_BUILDERS[model.task]


def builder_task(builder: str) -> str:
    """The task a builder's artefacts serve, by file convention: causal-LM builders are named `*-lm`."""
    return GENERATION if builder.endswith("-lm") else "text-classification"


def variants_for(matrix: Matrix, model: str, variants: tuple[str, ...]) -> tuple[str, ...]:
    """The profile's variants that apply to `model`: its task's builders, and a variant's `models` list if any.

    So one profile can list classifier and causal-LM variants and models side by side.
    """
    task = matrix.models[model].task
    return tuple(
        v
        for v in variants
        if builder_task(matrix.variants[v].builder) == task
        and (not matrix.variants[v].models or model in matrix.variants[v].models)
    )


def cell_modes(model: ModelSpec, measure: MeasureSpec) -> list[tuple[int, str]]:
    """(batch size, mode) of every cell one run job writes: seq modes for classifiers, cache modes for LMs."""
    if model.task == GENERATION:
        return [(b, m) for b in measure.generation_batch_sizes for m in CACHE_MODES]
    return [(b, s) for b in measure.batch_sizes for s in measure.seq_modes]


def _model_identity(matrix: Matrix, model: ModelSpec, root: Path) -> dict[str, object]:
    ident: dict[str, object] = {
        "source": model.source,
        "task": model.task,
        "max_length": model.max_length,
        "finetune": vars(model.finetune),
        "seed": matrix.seed,
    }
    if model.task == GENERATION:  # classifier identities (and so their cached artefacts) stay as they were
        ident["fallback"] = model.fallback
        ident["generation"] = vars(model.generation)
    if model.dataset is not None:
        ds = matrix.datasets[model.dataset]
        ident["dataset"] = vars(ds)
        if ds.kind == "bundled":
            checksum = root / "quantmatrix" / "datasets" / f"{ds.location}.sha256"
            ident["dataset_sha256"] = checksum.read_text().strip() if checksum.is_file() else None
    return ident


def build_jobs(matrix: Matrix, model_name: str, variants: tuple[str, ...], root: Path = REPO_ROOT) -> list[BuildJob]:
    """Jobs for the reference and every listed variant (plus the variants they start from), in order."""
    model = matrix.models[model_name]
    jobs: dict[str, BuildJob] = {}
    ref_builder = reference_builder(model)
    ref_key = artifact_key(
        f"{model_name}.{REFERENCE}",
        ref_builder,
        {},
        {},
        _code_version(ref_builder, root),
        extra=_model_identity(matrix, model, root),
    )
    jobs[REFERENCE] = BuildJob(model=model_name, variant=REFERENCE, builder=ref_builder, key=ref_key)

    def add(name: str) -> BuildJob:
        if name in jobs:
            return jobs[name]
        v = matrix.variants[name]
        source = add(v.source) if v.source != REFERENCE else jobs[REFERENCE]
        inputs = {"source": source.key, "reference": ref_key}
        key = artifact_key(f"{model_name}.{name}", v.builder, v.params, inputs, _code_version(v.builder, root))
        deps = tuple(dict.fromkeys([source.variant, REFERENCE]))
        jobs[name] = BuildJob(model=model_name, variant=name, builder=v.builder, key=key, inputs=inputs, deps=deps)
        return jobs[name]

    for name in variants:
        add(name)
    return list(jobs.values())


def check_planned_key(job: str, planned: str | None, key: str) -> None:
    """A job recomputes its artefact key from the code and matrix it sees; the launcher planned it from
    what it saw at the start. They differ when the code or the matrix changed while the run went on
    (keys hash both): then the job would look for, or build, an artefact nothing else in the run uses."""
    if planned is not None and planned != key:
        raise SpecError(
            f"{job}: its artefact key is now {key}, but this run planned {planned}: the code or the matrix "
            "changed after the run started (a key hashes the builder's code and its params); rerun the "
            "command so it plans again (complete artefacts and results are reused)"
        )
