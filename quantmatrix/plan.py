"""The plan: matrix profile -> build jobs with content keys, and the run cells that measure them.

Builders are found by file convention (`builders/<name with _>.py`), so keys can be computed —
and cached jobs skipped — without importing torch or any builder.
"""

from __future__ import annotations

import re
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


# `from builders._onnx import ...`, `from quantmatrix.torch_recipes import ...`, `import builders.reference`
_IMPORTS = re.compile(r"^\s*(?:from|import)\s+(builders|quantmatrix)\.(\w+)", re.MULTILINE)


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


# Record types, not build code: a new optional field changes no artefact, and a manifest an older
# builder wrote still loads (or fails its schema check, which rebuilds it). Hashing them made every
# additive schema change rebuild every artefact, the fine-tuned reference included.
_CONTRACTS = {("quantmatrix", "records"), ("quantmatrix", "errors")}


def _code_version(builder: str, root: Path) -> str:
    module = builder_module(builder, root)
    if not module.is_file():
        raise SpecError(f"builder {builder!r}: no module {module.relative_to(root)}")
    # The builder's module, the framework every builder runs in, and the project modules it
    # imports (so editing one builder's helpers never invalidates another builder's artefacts).
    shared = [root / "builders" / "__init__.py", root / "quantmatrix" / "hf.py", root / "quantmatrix" / "data.py"]
    imported = _IMPORTS.findall(module.read_text(encoding="utf-8"))
    shared += [root / package / f"{name}.py" for package, name in imported if (package, name) not in _CONTRACTS]
    return code_digest(dict.fromkeys(p for p in [module, *shared] if p.is_file()))


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
