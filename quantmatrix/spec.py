"""The matrix spec: `matrix.toml` loaded into frozen, typed objects, with one-line errors.

Every section is parsed from its dataclass: a field's type says what the key holds, its default is
the key's default, and its `Key` annotation documents it (docs/matrix.md is generated from these).
Every error names the file, the key path (`variants.ort-int8-static.params.per_channel`) and what
was expected, so a user can fix the file without reading a traceback.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

from quantmatrix.errors import SpecError

TASKS = ("text-classification", "text-generation")
DEVICES = ("cpu", "cuda")
SEQ_MODES = ("padded", "natural")
ANALYSIS_SPLITS = ("train", "validation", "test", "calibration")
FINETUNE_METHODS = ("lora", "full")
T = TypeVar("T")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")

# A check returns what is wrong with a value, or None when it is fine.
Check = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class Key:
    """How a dataclass field reads from matrix.toml, for the parser and the generated docs.

    `doc` is the docs' "meaning" column; `shown` replaces the default there when the value alone
    would mislead (`labels = ()` means "inferred"); `toml` is the key's name when it is not the
    field's (`from`); `what` describes the expected value in errors; `check` vets the value and
    `each` every item of a list.
    """

    doc: str = ""
    shown: str | None = None
    toml: str | None = None
    what: str | None = None
    check: Check | None = None
    each: Check | None = None


def one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"expected one of {list(choices)}, got {v!r}"


def at_least(low: int) -> Check:
    if low == 0:
        return lambda v: None if v >= 0 else "must not be negative"
    return lambda v: None if v >= low else f"must be at least {low}"


def _positive_item(v: Any) -> str | None:
    return None if v >= 1 else f"expected a positive integer, got {v!r}"


def _rate(v: Any) -> str | None:
    return None if 0 <= v <= 1 else f"expected a rate between 0 and 1 (0.05 = 5% of words), got {v!r}"


def prefixed(what: str, *kinds: str) -> Check:
    """`kind:rest` sources: the kind must be one of `kinds`."""
    return lambda v: None if ":" in v and v.split(":", 1)[0] in kinds else f"expected {what}, got {v!r}"


DATASET_SOURCES = "'bundled:<name>', 'file:<path>' or 'hf:<id>'"
MODEL_SOURCES = "'package:<name>', 'hf:<id or dir>' or 'random:<arch>'"
SETTINGS_SEED = "`[settings] seed`"
POSITIVE_INTS = "a list of positive integers"


@dataclass(frozen=True)
class Settings:
    """`[settings]`: matrix-wide values."""

    seed: Annotated[
        int,
        Key("seed for everything seeded (fine-tune, splits carved from a train split), unless a table sets its own"),
    ] = 1234


@dataclass(frozen=True)
class DatasetSpec:
    """Where labelled text comes from.

    `source` is one of `bundled:<name>`, `file:<path>` (CSV/JSONL/Parquet, relative to the
    matrix file) or `hf:<id>` (a Hugging Face `datasets` id or a local dataset directory).
    """

    name: str
    source: Annotated[
        str,
        Key(
            "`bundled:headlines9`, `file:<path>` (CSV/TSV/JSONL/JSON/Parquet, relative to matrix.toml) or "
            "`hf:<hub id or local dir>`",
            what=DATASET_SOURCES,
            check=prefixed(DATASET_SOURCES, "bundled", "file", "hf"),
        ),
    ]
    text_column: Annotated[str, Key("column holding the text")] = "text"
    label_column: Annotated[str, Key("label names, or integer class ids indexing `labels`")] = "label"
    split_column: Annotated[
        str | None,
        Key(
            "column naming each row's split (train/validation/test/calibration); without it, missing splits are "
            "carved from train (validation 10%, test 15%, calibration 5% up to 500)"
        ),
    ] = None
    labels: Annotated[
        tuple[str, ...],
        Key("label names in class-id order; inferred from a `ClassLabel` feature or sorted values", shown="inferred"),
    ] = ()
    seed: Annotated[int, Key("seed of the carving shuffle", shown=SETTINGS_SEED)] = 1234

    @property
    def kind(self) -> str:
        return self.source.split(":", 1)[0]

    @property
    def location(self) -> str:
        return self.source.split(":", 1)[1]


@dataclass(frozen=True)
class FinetuneSpec:
    """How the FP32 reference is trained from the pretrained encoder (LoRA by default)."""

    method: Annotated[str, Key("`lora` (peft, merged after training) or `full`", check=one_of(*FINETUNE_METHODS))] = (
        "lora"
    )
    epochs: Annotated[float, Key("training epochs (fractions allowed)")] = 3.0
    learning_rate: Annotated[float, Key("AdamW learning rate")] = 1e-3
    batch_size: Annotated[int, Key("training batch size")] = 32
    lora_r: Annotated[int, Key("LoRA rank")] = 8
    lora_alpha: Annotated[int, Key("LoRA scaling alpha")] = 16
    lora_dropout: Annotated[float, Key("LoRA dropout")] = 0.05
    target_modules: Annotated[tuple[str, ...], Key("modules LoRA adapts")] = ("query", "value")
    max_train_examples: Annotated[int, Key("cap on training examples (0: all)")] = 0
    seed: Annotated[int, Key("also the seed of a causal LM's random init", shown=SETTINGS_SEED)] = 1234


@dataclass(frozen=True)
class GenerationSpec:
    """Causal LMs: the fixed prompts (first test-split texts of at least `prompt_tokens` tokens, cut to
    that length so a batch needs no padding) and how many tokens greedy generation adds."""

    prompts: Annotated[
        int,
        Key(
            'causal LMs (`task = "text-generation"`): fixed prompts, the first test-split texts with at least '
            "`prompt_tokens` tokens",
            check=at_least(1),
        ),
    ] = 4
    prompt_tokens: Annotated[
        int, Key("prompts are cut to this many tokens, so a batch needs no padding", check=at_least(1))
    ] = 16
    new_tokens: Annotated[int, Key("greedy tokens generated per prompt", check=at_least(1))] = 32


@dataclass(frozen=True)
class ModelSpec:
    """A model to quantise: `source` is `package:<pypi-name>`, `hf:<id or dir>` or `random:<arch>`.

    `fallback` (a `random:<arch>` source) is used, and labelled random-init, when `source` cannot be
    loaded (no hub, no local copy).
    """

    name: str
    source: Annotated[
        str,
        Key(
            "`package:<pypi name>` (a model inside an installed package), `hf:<id or dir>`, or `random:bert-tiny` / "
            "`random:bert-mini` / `random:distilgpt2` / `random:gpt2-tiny` (seeded random init, labelled as such "
            "in results)",
            what=MODEL_SOURCES,
            check=prefixed(MODEL_SOURCES, "package", "hf", "random"),
        ),
    ]
    task: Annotated[str, Key("`text-classification` or `text-generation`", check=one_of(*TASKS))] = (
        "text-classification"
    )
    dataset: Annotated[
        str | None,
        Key(
            "a `[datasets]` name: a classifier's labelled data; a causal LM's prompts (its test split)",
            shown="required",
        ),
    ] = None
    max_length: Annotated[int, Key("tokeniser truncation")] = 128
    finetune: Annotated[FinetuneSpec, Key("how the FP32 reference is fine-tuned")] = field(default_factory=FinetuneSpec)
    fallback: Annotated[
        str | None,
        Key(
            "a `random:<arch>` source used (and labelled random-init) when `source` cannot be loaded: no local "
            "copy, no hub",
            check=lambda v: (
                None if v.startswith("random:") else f"expected 'random:<arch>' (a seeded random init), got {v!r}"
            ),
        ),
    ] = None
    generation: Annotated[GenerationSpec, Key("causal LMs: prompts and generated tokens")] = field(
        default_factory=GenerationSpec
    )


@dataclass(frozen=True)
class VariantSpec:
    """One artefact to build: a builder, its parameters, and the variant it starts from."""

    name: str
    builder: Annotated[
        str, Key("a module in `builders/` (`onnx-fp32`, `ort-int8-dynamic`, `ort-int8-static`, …): docs/variants.md")
    ]
    params: Annotated[Mapping[str, Any], Key("the builder's params dataclass (docs/variants.md)")] = field(
        default_factory=dict
    )
    source: Annotated[
        str, Key("the variant this one starts from (e.g. `ort-int8-dynamic` from `onnx-fp32`)", toml="from")
    ] = "reference"
    runners: Annotated[tuple[str, ...], Key("restrict to these runner names", shown="all compatible")] = ()
    models: Annotated[
        tuple[str, ...],
        Key(
            "restrict to these model names. Builders named `*-lm` apply to `text-generation` models only, the "
            "others to classifiers only, so one profile can list both",
            shown="all of the task",
        ),
    ] = ()


@dataclass(frozen=True)
class RunnerSpec:
    """A backend on a device, with its options (threads, compile, graph optimisation...)."""

    name: str
    backend: Annotated[str, Key("a module in `runners/`: docs/variants.md lists them")]
    device: Annotated[str, Key("`cpu` or `cuda`", check=one_of(*DEVICES))] = "cpu"
    params: Annotated[
        Mapping[str, Any],
        Key("the backend's params dataclass, e.g. torch `{ compile = true }` (docs/variants.md)"),
    ] = field(default_factory=dict)
    inject_busy: Annotated[
        float,
        Key(
            "harness self-check only: after every timed call of a classifier cell (generation cells ignore "
            "it), spin for this share of the call's own time (0.15: a known 15% slowdown, to check that "
            "`compare` and its gate catch it); recorded in the result's runner options",
            check=at_least(0),
        ),
    ] = 0.0


@dataclass(frozen=True)
class MeasureSpec:
    """The measurement protocol's knobs; profiles may override any of them."""

    batch_sizes: Annotated[tuple[int, ...], Key("batch sizes timed", what=POSITIVE_INTS, each=_positive_item)] = (1, 8)
    seq_modes: Annotated[
        tuple[str, ...],
        Key(
            "`padded`: every input padded to `padded_length`; `natural`: each batch padded to its longest member",
            each=one_of(*SEQ_MODES),
        ),
    ] = ("padded", "natural")
    padded_length: Annotated[int, Key("tokens per input in `padded` mode", check=at_least(0))] = 128
    warmup: Annotated[int, Key("untimed calls before timing", check=at_least(0))] = 10
    min_iterations: Annotated[int, Key("timed calls at least …", check=at_least(0))] = 30
    min_seconds: Annotated[float, Key("… and at least this long …")] = 2.0
    max_seconds: Annotated[float, Key("… but stop after this long …")] = 30.0
    max_iterations: Annotated[
        int,
        Key(
            "… or after this many timed calls (every raw sample is kept in the result, so this caps them)",
            check=at_least(1),
        ),
    ] = 5000
    eval_examples: Annotated[int, Key("test examples scored (0: the whole test split)", check=at_least(0))] = 0
    threads: Annotated[
        int,
        Key(
            "intra-op threads (0: every core this process may use); a runner's own `threads` param wins",
            check=at_least(0),
        ),
    ] = 0
    repeats: Annotated[
        int,
        Key(
            "interleaved rounds: each round measures every (variant, runner) once, so slow drift of a shared "
            "machine spreads over all variants instead of biasing one",
            check=at_least(1),
        ),
    ] = 1
    slice_seconds: Annotated[
        float,
        Key(
            "interleaved timing: the cells of one model and round take turns of this many seconds in a fresh "
            "random order each round, each cell still in its own process, until every cell has met the stopping "
            "rule above (0: each cell timed in one uninterrupted loop). Speed-up CIs then pair the rounds",
            check=at_least(0),
        ),
    ] = 0.0
    generation_batch_sizes: Annotated[
        tuple[int, ...],
        Key(
            "causal LMs: batch sizes of the generation cells (each with and without the KV cache)",
            what=POSITIVE_INTS,
            each=_positive_item,
        ),
    ] = (1, 4)
    generation_warmup: Annotated[
        int,
        Key(
            "causal LMs: untimed greedy generations (one batch of prompts each) before timing each cell",
            check=at_least(0),
        ),
    ] = 1
    generation_rounds: Annotated[
        int,
        Key(
            "causal LMs: timed passes over every prompt (batch 1: one prompt at a time); every sample is kept",
            check=at_least(1),
        ),
    ] = 3
    robustness_levels: Annotated[
        tuple[float, ...],
        Key(
            "robustness under typos: shares of words mistyped (e.g. `[0.0, 0.05, 0.10, 0.20]`); each run then "
            "scores the test split at every rate (one typo per chosen word: swap of two neighbouring letters, a "
            "letter dropped or doubled, a QWERTY neighbour), with agreement against the FP32 reference on the same "
            "texts and the examples whose prediction flips; stored as the result's `robustness` section. Empty: "
            "not measured",
            what="a list of rates between 0 and 1",
            each=_rate,
        ),
    ] = ()
    robustness_seed: Annotated[int, Key("seed of the typos (every variant sees the same perturbed texts)")] = 1234


@dataclass(frozen=True)
class Thresholds:
    """Verdict rule: pass when macro-F1 >= pass_f1_ratio x FP32 and agreement >= pass_agreement."""

    pass_f1_ratio: Annotated[float, Key("`pass` needs macro-F1 ≥ this × the FP32 reference's …")] = 0.99
    pass_agreement: Annotated[float, Key("… and top-1 agreement with the reference ≥ this")] = 0.98
    fail_f1_ratio: Annotated[float, Key("`fail` when macro-F1 < this × the reference's; `drift` otherwise")] = 0.90


@dataclass(frozen=True)
class ProfileSpec:
    """A named slice of the matrix: which models, variants and runners, with measure overrides."""

    name: str
    models: Annotated[tuple[str, ...], Key("`[models]` names to run")]
    variants: Annotated[
        tuple[str, ...], Key("`[variants]` names; each runs on every listed runner whose backend reads its format")
    ]
    runners: Annotated[tuple[str, ...], Key("`[runners]` names")]
    measure: Annotated[MeasureSpec, Key("overrides of `[measure]`", shown="`[measure]`")] = field(
        default_factory=MeasureSpec
    )
    analyses: Annotated[
        tuple[str, ...],
        Key(
            "`[analyses]` names to run after the measurements; what they read is built even if `variants` does "
            "not list it"
        ),
    ] = ()


@dataclass(frozen=True)
class AnalysisSpec:
    """One analysis (`[analyses.<name>]`): a kind run on a model's variants and runners, on one split.

    What `variants`, `runners` and `params` must hold depends on the kind (its module in
    `runners/analyses/` checks them); each analysis writes `results/<run-id>/analyses/<name>.json`.
    """

    name: str
    kind: Annotated[str, Key("a module in `runners/analyses/` (`python -m runners list`)")]
    model: Annotated[str, Key("a `[models]` name")]
    variants: Annotated[tuple[str, ...], Key("the variants it reads (what the kind needs)")] = ()
    runners: Annotated[tuple[str, ...], Key("the runners it uses")] = ()
    split: Annotated[
        str,
        Key(
            "the dataset split it scores: `train`, `validation`, `test` or `calibration`",
            check=one_of(*ANALYSIS_SPLITS),
        ),
    ] = "validation"
    params: Annotated[Mapping[str, Any], Key("the kind's params dataclass (`runners/analyses/<kind>.py`)")] = field(
        default_factory=dict
    )


# Each top-level table of matrix.toml and the dataclass of its entries (or of itself), for the docs.
SECTIONS: Mapping[str, type] = {
    "settings": Settings,
    "thresholds": Thresholds,
    "measure": MeasureSpec,
    "datasets": DatasetSpec,
    "models": ModelSpec,
    "runners": RunnerSpec,
    "variants": VariantSpec,
    "profiles": ProfileSpec,
    "analyses": AnalysisSpec,
}


@dataclass(frozen=True)
class Matrix:
    path: Path
    seed: int
    datasets: Mapping[str, DatasetSpec]
    models: Mapping[str, ModelSpec]
    variants: Mapping[str, VariantSpec]
    runners: Mapping[str, RunnerSpec]
    profiles: Mapping[str, ProfileSpec]
    thresholds: Thresholds
    analyses: Mapping[str, AnalysisSpec] = field(default_factory=dict)
    measure: MeasureSpec = field(default_factory=MeasureSpec)  # the file's `[measure]`, before profile overrides

    def profile(self, name: str) -> ProfileSpec:
        if name not in self.profiles:
            raise SpecError(f"{self.path}: unknown profile {name!r}; expected one of {sorted(self.profiles)}")
        return self.profiles[name]

    def dataset_for(self, model: ModelSpec) -> DatasetSpec:
        assert model.dataset is not None  # guaranteed by load_matrix for classifiers
        return self.datasets[model.dataset]


@dataclass(frozen=True)
class FieldInfo:
    """One key of a matrix section, as the parser and the docs generator see it."""

    name: str  # the dataclass field
    toml: str  # the key in matrix.toml
    hint: Any  # the field's type, Annotated stripped
    key: Key
    default: Any  # dataclasses.MISSING when the key is required

    @property
    def section(self) -> type | None:
        """The dataclass of a nested table (`[models.<name>.finetune]`), else None."""
        return self.hint if isinstance(self.hint, type) and dataclasses.is_dataclass(self.hint) else None


def section_fields(kind: Any) -> tuple[FieldInfo, ...]:
    """The keys of a section dataclass, in declaration order; `name` (the table's own key) is not one."""
    hints = typing.get_type_hints(kind, include_extras=True)
    out = []
    for f in dataclasses.fields(kind):
        if f.name == "name":
            continue
        hint, key = hints[f.name], Key()
        if typing.get_origin(hint) is Annotated:
            hint, *extras = typing.get_args(hint)
            key = next((e for e in extras if isinstance(e, Key)), key)
        default: Any = dataclasses.MISSING
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        out.append(FieldInfo(f.name, key.toml or f.name, hint, key, default))
    return tuple(out)


class _Reader:
    """A TOML table that remembers its key path for error messages and which keys were read."""

    def __init__(self, path: Path, table: Mapping[str, Any], where: str) -> None:
        self.path, self.table, self.where = path, table, where
        self.used: set[str] = set()

    def at(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, message: str) -> SpecError:
        return SpecError(f"{self.path}: {self.at(key)}: {message}")

    def table_of(self, key: str) -> _Reader:
        self.used.add(key)
        value = self.table.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {type(value).__name__} {value!r}")
        return _Reader(self.path, value, self.at(key))

    def entries(self, key: str) -> dict[str, _Reader]:
        """The named tables of a section (`[datasets.<name>]`), names checked."""
        section = self.table_of(key)
        for name in section.table:
            if not _NAME.match(name):
                raise section.fail(name, "names must be lowercase letters, digits, '.', '_' or '-'")
        return {name: section.table_of(name) for name in section.table}

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.fail(unknown[0], "unknown key")


def _section(kind: type[T], r: _Reader, name: str | None = None, defaults: Mapping[str, Any] | None = None) -> T:
    """Build a section dataclass from its TOML table: each field's type, checks and default apply.

    `defaults` override the dataclass's own for this matrix (a seed from `[settings]`, a profile's
    measure inheriting `[measure]`); a nested section's default is the instance it inherits from.
    """
    values: dict[str, Any] = {} if name is None else {"name": name}
    for f in section_fields(kind):
        default = (defaults or {}).get(f.name, f.default)
        nested = f.section
        if nested is not None:
            inherited = {g.name: getattr(default, g.name) for g in section_fields(nested)} if default else None
            values[f.name] = _section(nested, r.table_of(f.toml), defaults=inherited)
            continue
        r.used.add(f.toml)
        where = f"{r.path}: {r.at(f.toml)}"
        if f.toml not in r.table:
            if default is dataclasses.MISSING:
                raise r.fail(f.toml, f"missing; expected {f.key.what or _describe(f.hint)}")
            values[f.name] = default
            continue
        value = _coerce(f.hint, r.table[f.toml], where, f.key.what)
        if f.key.each is not None:
            for i, item in enumerate(value):
                problem = f.key.each(item)
                if problem:
                    raise r.fail(f"{f.toml}[{i}]", problem)
        problem = f.key.check(value) if f.key.check is not None and value is not None else None
        if problem:
            raise r.fail(f.toml, problem)
        values[f.name] = value
    r.done()
    return kind(**values)


def load_matrix(
    path: str | Path,
    *,
    builders: Mapping[str, Any] | None = None,
    backends: Mapping[str, Any] | None = None,
    analyses: Mapping[str, Any] | None = None,
) -> Matrix:
    """Load and validate `path`. `builders`/`backends`/`analyses`, when given, are the known plugin names."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: TOML syntax error: {e}") from None
    return parse_matrix(doc, path, builders=builders, backends=backends, analyses=analyses)


def _unknown(r: _Reader, key: str, name: str, known: Mapping[str, Any], what: str) -> None:
    if name not in known:
        raise r.fail(key, f"unknown {what} {name!r}; defined: {sorted(known)}")


def _plugin_params(plugins: Mapping[str, Any] | None, name: str, params: Mapping[str, Any], where: str) -> None:
    """Check a plugin's `params` table against its params dataclass, when the plugins are known."""
    kind = getattr(plugins[name], "params", None) if plugins is not None else None
    if kind is not None:
        parse_params(kind, params, where)


def parse_matrix(
    doc: Mapping[str, Any],
    path: Path,
    *,
    builders: Mapping[str, Any] | None = None,
    backends: Mapping[str, Any] | None = None,
    analyses: Mapping[str, Any] | None = None,
) -> Matrix:
    root = _Reader(path, doc, "")
    settings = _section(Settings, root.table_of("settings"))
    seeded = {"seed": settings.seed}
    thresholds = _section(Thresholds, root.table_of("thresholds"))
    base_measure = _section(MeasureSpec, root.table_of("measure"))

    datasets = {name: _section(DatasetSpec, r, name, seeded) for name, r in root.entries("datasets").items()}

    models: dict[str, ModelSpec] = {}
    for name, r in root.entries("models").items():
        m = _section(ModelSpec, r, name, {"finetune": FinetuneSpec(seed=settings.seed)})
        if m.dataset is None:
            needs = (
                "a text-classification model needs a dataset name"
                if m.task == "text-classification"
                else "a text-generation model takes its prompts from a dataset's test split"
            )
            raise r.fail("dataset", f"missing; {needs}")
        _unknown(r, "dataset", m.dataset, datasets, "dataset")
        models[name] = m

    runners: dict[str, RunnerSpec] = {}
    for name, r in root.entries("runners").items():
        spec = _section(RunnerSpec, r, name)
        if backends is not None and spec.backend not in backends:
            raise r.fail("backend", f"unknown backend {spec.backend!r}; expected one of {sorted(backends)}")
        _plugin_params(backends, spec.backend, spec.params, f"{path}: runners.{name}.params")
        runners[name] = spec

    variants: dict[str, VariantSpec] = {}
    vtabs = root.entries("variants")
    for name, r in vtabs.items():
        if name == "reference":
            raise SpecError(
                f"{path}: variants.{name}: 'reference' is reserved for the FP32 reference every variant starts from"
            )
        v = _section(VariantSpec, r, name)
        if builders is not None and v.builder not in builders:
            raise r.fail("builder", f"unknown builder {v.builder!r}; expected one of {sorted(builders)}")
        _plugin_params(builders, v.builder, v.params, f"{path}: variants.{name}.params")
        variants[name] = v
    for v in variants.values():
        r = vtabs[v.name]
        if v.source != "reference" and v.source not in variants:
            raise r.fail("from", f"unknown variant {v.source!r}; expected 'reference' or one of {sorted(variants)}")
        for i, runner in enumerate(v.runners):
            _unknown(r, f"runners[{i}]", runner, runners, "runner")
        for i, model in enumerate(v.models):
            _unknown(r, f"models[{i}]", model, models, "model")
        seen = [v.name]
        cur = v
        while cur.source != "reference":
            cur = variants[cur.source]
            if cur.name in seen:
                raise r.fail("from", f"cycle: {' -> '.join([*seen, cur.name])}")
            seen.append(cur.name)

    analysis_specs = _analyses(root.entries("analyses"), models, variants, runners, analyses)

    profiles: dict[str, ProfileSpec] = {}
    for name, r in root.entries("profiles").items():
        profile = _section(ProfileSpec, r, name, {"measure": base_measure})
        known: dict[str, Mapping[str, Any]] = {
            "models": models, "variants": variants, "runners": runners, "analyses": analysis_specs
        }  # fmt: skip
        for key, names in known.items():
            what = "analysis" if key == "analyses" else key[:-1]
            for i, item in enumerate(getattr(profile, key)):
                _unknown(r, f"{key}[{i}]", item, names, what)
        profiles[name] = profile
    root.done()
    if not profiles:
        raise SpecError(f"{path}: profiles: at least one profile is required")
    return Matrix(
        path=path.resolve(),
        seed=settings.seed,
        datasets=datasets,
        models=models,
        variants=variants,
        runners=runners,
        profiles=profiles,
        thresholds=thresholds,
        analyses=analysis_specs,
        measure=base_measure,
    )


def _analyses(
    tables: Mapping[str, _Reader],
    models: Mapping[str, ModelSpec],
    variants: Mapping[str, VariantSpec],
    runners: Mapping[str, RunnerSpec],
    kinds: Mapping[str, Any] | None,
) -> dict[str, AnalysisSpec]:
    """`[analyses.<name>]` tables. With `kinds` (the analysis registry), the kind, its params and its
    own constraints (`check(spec, variants, runners) -> (key, message) | None`) are checked too."""
    out: dict[str, AnalysisSpec] = {}
    for name, r in tables.items():
        # A misspelt key is reported before the kind's complaints that it may explain.
        spec = _section(AnalysisSpec, r, name)
        if kinds is not None and spec.kind not in kinds:
            raise r.fail("kind", f"unknown analysis kind {spec.kind!r}; expected one of {sorted(kinds)}")
        _unknown(r, "model", spec.model, models, "model")
        for i, v in enumerate(spec.variants):
            if v != "reference":
                _unknown(r, f"variants[{i}]", v, variants, "variant")
        for i, rn in enumerate(spec.runners):
            _unknown(r, f"runners[{i}]", rn, runners, "runner")
        if kinds is not None:
            _plugin_params(kinds, spec.kind, spec.params, f"{r.path}: analyses.{name}.params")
            check = getattr(kinds[spec.kind], "check", None)
            problem = check(spec, variants, runners) if check is not None else None
            if problem is not None:
                raise r.fail(*problem)
        out[name] = spec
    return out


def parse_params(kind: Callable[..., T], values: Mapping[str, Any], where: str) -> T:
    """Build a params dataclass from a TOML table, checking names and types.

    `where` is the key path used in errors, e.g. 'matrix.toml: variants.ort-int8-static.params'.
    A registry's `params: type` gives Any; a dataclass gives an instance of it.
    """
    make = kind  # is_dataclass narrows `kind` to a type mypy cannot call back into T
    if not dataclasses.is_dataclass(kind):
        raise TypeError(f"{kind!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(kind)}
    hints = typing.get_type_hints(kind)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise SpecError(f"{where}.{unknown[0]}: unknown parameter; expected one of {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
    try:
        return make(**kwargs)
    except (TypeError, ValueError) as e:
        raise SpecError(f"{where}: {e}") from None


_KINDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _describe(hint: Any) -> str:
    """What a value of type `hint` looks like in TOML, for error messages."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        inner = {str: "names", int: "integers", float: "numbers"}.get(args[0] if args else Any, "values")
        return f"a list of {inner}"
    if origin in (dict, collections.abc.Mapping) or hint is dict:
        return "a table"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    return _KINDS.get(hint, getattr(hint, "__name__", str(hint)))


def _coerce(hint: Any, value: Any, where: str, what: str | None = None) -> Any:
    """`value` as type `hint` (TOML integers are numbers; bools are never numbers), or a SpecError."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    expected = what or _describe(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where, what)
            except SpecError as e:
                errors.append(str(e))
        raise SpecError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise SpecError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise SpecError(f"{where}: expected {expected}, got {type(value).__name__} {value!r}")
        inner = args[0] if args else Any
        item = "a name (string)" if inner is str else None
        return tuple(_coerce(inner, v, f"{where}[{i}]", item) for i, v in enumerate(value))
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise SpecError(f"{where}: expected {expected}, got {type(value).__name__} {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, bool):
        raise SpecError(f"{where}: expected {expected}, got bool {value!r}")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise SpecError(f"{where}: expected {expected}, got {type(value).__name__} {value!r}")
    return value
