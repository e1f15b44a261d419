"""The plan: matrix profile -> build jobs with content keys, and the run cells that measure them.

Builders are found by file convention (`builders/<name with _>.py`), so keys can be computed —
and cached jobs skipped — without importing torch or any builder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from quantmatrix.errors import SpecError
from quantmatrix.spec import Matrix, ModelSpec
from quantmatrix.store import artifact_key, code_digest

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE = "reference"


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


def _code_version(builder: str, root: Path) -> str:
    module = builder_module(builder, root)
    if not module.is_file():
        raise SpecError(f"builder {builder!r}: no module {module.relative_to(root)}")
    # The builder's module, the framework every builder runs in, and the project modules it
    # imports (so editing one builder's helpers never invalidates another builder's artefacts).
    shared = [root / "builders" / "__init__.py", root / "quantmatrix" / "hf.py", root / "quantmatrix" / "data.py"]
    imported = _IMPORTS.findall(module.read_text(encoding="utf-8"))
    shared += [root / package / f"{name}.py" for package, name in imported]
    return code_digest(dict.fromkeys(p for p in [module, *shared] if p.is_file()))


def _model_identity(matrix: Matrix, model: ModelSpec, root: Path) -> dict[str, object]:
    ident: dict[str, object] = {
        "source": model.source,
        "task": model.task,
        "max_length": model.max_length,
        "finetune": vars(model.finetune),
        "seed": matrix.seed,
    }
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
    ref_key = artifact_key(
        f"{model_name}.{REFERENCE}",
        REFERENCE,
        {},
        {},
        _code_version(REFERENCE, root),
        extra=_model_identity(matrix, model, root),
    )
    jobs[REFERENCE] = BuildJob(model=model_name, variant=REFERENCE, builder=REFERENCE, key=ref_key)

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
