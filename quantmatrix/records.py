"""Typed, versioned records that cross process boundaries: the artefact Manifest and the run Result.

Both are pydantic models that forbid unknown fields, carry `schema_version`, are written
atomically and exported as JSON Schema (`schemas/*.schema.json`, kept current by a test).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from quantmatrix.capabilities import Capability
from quantmatrix.errors import RecordError
from quantmatrix.machine_lock import DISTURBED_SHARE

MANIFEST_VERSION: Literal[2] = 2
RESULT_VERSION: Literal[2] = 2
PREDICTION_VERSION: Literal[1] = 1
ANALYSIS_VERSION: Literal[1] = 1

Status = Literal["ok", "failed", "skipped"]
Verdict = Literal["pass", "drift", "fail", "skipped", "failed", "reference", "n/a"]
Format = Literal["torch", "onnx", "tensorrt", "openvino", "none"]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, protected_namespaces=())


class TensorSpec(Record):
    """One named input or output of an artefact; `shape` uses strings for dynamic axes."""

    name: str
    dtype: str
    shape: list[int | str]


class FileEntry(Record):
    path: str
    sha256: str
    size: int


class Fingerprint(Record):
    """Where something ran: hardware, OS, and the software that matters for the numbers."""

    hostname_hash: str
    machine_id: str = Field(description="stable id derived from CPU, cores, RAM and GPU, for grouping")
    cpu_model: str
    cpu_cores_logical: int
    cpu_cores_physical: int | None = None
    cpu_flags: list[str] = Field(default_factory=list, description="relevant ISA flags only")
    ram_bytes: int
    os: str
    python: str
    packages: dict[str, str] = Field(default_factory=dict)
    git_commit: str | None = None
    git_dirty: bool | None = None
    git_commit_date: str | None = Field(None, description="committer date of git_commit, ISO 8601 (for history)")
    gpu_name: str | None = None
    gpu_driver: str | None = None
    cuda_version: str | None = None
    tensorrt_version: str | None = None
    compute_capability: str | None = None
    image: str | None = Field(None, description="container image tag/digest, or venv lock hash")
    runtime: Literal["docker", "venv", "local"] = "local"


# -- How a runner loads a torch artefact: one typed recipe per way, told apart by `kind` ------------------
# Quantised torch modules have no safe serialisation, so a torch artefact holds safetensors and the
# recipe that rebuilds the module from them at load time (quantmatrix.torch_recipes, causal_lm, bnb).


class LoadRecipe(Record):
    """Shared by every load recipe: `as_recipe()` is the recipe as the rebuild functions and results name it."""

    kind: str

    def as_recipe(self) -> dict[str, Any]:
        return {"name": self.kind, **self.model_dump(mode="json", exclude={"kind"}, exclude_defaults=True)}


class HfLoad(LoadRecipe):
    """A Hugging Face safetensors directory, loaded as saved (FP32 reference, FP16/BF16 casts)."""

    kind: Literal["hf"] = "hf"


class DynamicInt8Load(LoadRecipe):
    """Classifier: every nn.Linear (but `keep_fp32`) quantised to dynamic INT8 after loading the FP32 weights."""

    kind: Literal["dynamic-int8"] = "dynamic-int8"
    engine: Literal["torch.ao", "torchao"]
    keep_fp32: list[str] = Field(default_factory=list, description="module paths left FP32")


class Pt2eInt8Load(LoadRecipe):
    """Classifier: static PT2E INT8, re-calibrated at load on the saved calibration batches (deterministic)."""

    kind: Literal["pt2e-int8"] = "pt2e-int8"
    calibration: str = Field(description="tokenised calibration batches (JSON), relative to the artefact")


class Pt2eQatInt8Load(LoadRecipe):
    """Classifier: PT2E QAT, re-prepared at load, its trained state loaded, then converted."""

    kind: Literal["pt2e-qat-int8"] = "pt2e-qat-int8"
    calibration: str = Field(description="an example batch (JSON) for the export, relative to the artefact")
    state: str = Field(description="the trained prepared graph's state (safetensors), relative to the artefact")


class DynamicInt8LmLoad(LoadRecipe):
    """Causal LM: GPT-2's Conv1D turned into Linear, then every Linear dynamic INT8."""

    kind: Literal["dynamic-int8-lm"] = "dynamic-int8-lm"


class BnbLlmInt8Load(LoadRecipe):
    """Causal LM: bitsandbytes LLM.int8 applied while loading the FP32 weights onto the GPU."""

    kind: Literal["bnb-llm-int8"] = "bnb-llm-int8"
    threshold: float = Field(description="outlier threshold: activations above it stay FP16")


TorchLoad = Annotated[
    HfLoad | DynamicInt8Load | Pt2eInt8Load | Pt2eQatInt8Load | DynamicInt8LmLoad | BnbLlmInt8Load,
    Field(discriminator="kind"),
]


class EncoderArch(Record):
    """A BERT-style classifier's shape, from its config: read by fusion and by the operation count."""

    kind: Literal["encoder"] = "encoder"
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_labels: int


class DecoderArch(Record):
    """A GPT-2-style causal LM's shape, from its config."""

    kind: Literal["decoder"] = "decoder"
    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int
    vocab_size: int


ModelArch = Annotated[EncoderArch | DecoderArch, Field(discriminator="kind")]


class EngineTarget(Record):
    """What a TensorRT engine is tied to: it runs only with the TensorRT version and GPU it was built with."""

    tensorrt_version: str | None = None
    gpu_name: str | None = None
    compute_capability: str | None = None


class Manifest(Record):
    """What a builder produced: `artifacts/<key>/manifest.json`.

    What a later stage reads is a typed field; `extra` holds facts for people only (tools used, op
    counts, tracebacks) and no stage may depend on it.
    """

    schema_version: Literal[2] = MANIFEST_VERSION
    key: str
    builder: str
    variant: str
    model: str
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str] = Field(default_factory=dict, description="role -> input artefact key")
    files: list[FileEntry] = Field(default_factory=list)
    format: Format
    precision: str
    task: str
    id2label: dict[str, str] = Field(default_factory=dict)
    tokenizer: str | None = Field(None, description="tokenizer directory, relative to the artefact")
    entry: str | None = Field(None, description="main file of the artefact, relative to it")
    io_inputs: list[TensorSpec] = Field(default_factory=list)
    io_outputs: list[TensorSpec] = Field(default_factory=list)
    device: Literal["cpu", "cuda", "any"] = "cpu"
    build_seconds: float = 0.0
    steps: list[str] = Field(default_factory=list, description="prepare/calibrate/train/convert... in order")
    notes: list[str] = Field(default_factory=list, description="deprecations, caveats")
    metrics: dict[str, float] = Field(default_factory=dict)
    load: TorchLoad | None = Field(None, description="torch artefacts: how a runner rebuilds the module")
    arch: ModelArch | None = Field(None, description="references: the model's shape, from its config")
    search: MixedPrecisionSearch | None = Field(None, description="mixed-precision artefacts: the layer search")
    engine: EngineTarget | None = Field(None, description="TensorRT engines: the TensorRT and GPU built for")
    tokenizer_origin: str | None = Field(None, description="where the tokenizer came from, when not the model's own")
    extra: dict[str, Any] = Field(default_factory=dict, description="free-form facts for people; nothing reads it")
    random_init: bool = False
    environment: Fingerprint | None = None
    status: Status = "ok"
    reason: str | None = None
    created: str

    @model_validator(mode="after")
    def _torch_artefacts_name_their_load(self) -> Manifest:
        if self.status == "ok" and (self.format == "torch") != (self.load is not None):
            raise ValueError(
                f"format {self.format!r}: a torch artefact needs `load` (how to rebuild it) and only a torch one has it"
            )
        return self


class LatencySlice(Record):
    """One short stretch of a timed loop: samples[first:first + count], measured as one turn.

    Slices with the same `round` across the cells of one comparison group were measured side by side
    (the cells took turns), so a slow phase of the host hits them alike: statistics pair them.
    """

    first: int = Field(ge=0, description="index of the slice's first sample in Latency.samples")
    count: int = Field(ge=1)
    started: float = Field(description="wall-clock epoch seconds at the slice's first sample")
    round: int = Field(ge=0, description="the interleaving round; same round across cells = measured side by side")


class Latency(Record):
    """Raw per-call samples and their summary; `unit` applies to all values."""

    unit: Literal["ms"] = "ms"
    samples: list[float]
    p50: float
    p90: float
    p99: float
    mean: float
    stdev: float
    min: float
    max: float
    iterations: int
    warmup: int
    background_cores: float | None = Field(
        None,
        description="CPU time other processes used while these samples were taken, in cores (from /proc/stat): "
        "near 0 on a quiet machine; a large value means the samples compete with other work",
    )
    probe_ms: float | None = Field(
        None,
        description="the machine's own speed around the timed loop: ms of a fixed single-thread workload (best "
        "of 3) on its slowest CPU, before or after (lower is faster); a VM's host can slow a vCPU unseen by the guest",
    )
    probe_cpus_ms: list[float] | None = Field(None, description="the same probe on each usable CPU, in CPU order")
    bandwidth_gbs: list[float] | None = Field(
        None,
        description="single-thread memory copy bandwidth in GB/s just before and just after the timed loop "
        "(64 MiB, far past the caches): a VM shares this path with the host's other tenants, and a batch-1 "
        "forward pass streams its weights over it",
    )
    lock_wait_s: float | None = Field(
        None, description="seconds waited for the machine-wide timing turn (another process was timing)"
    )
    quiet_wait_s: float | None = Field(
        None, description="seconds waited, holding the turn, for other work to drop below the disturbed share"
    )
    timed_from: float | None = Field(None, description="wall clock (Unix seconds) of the first timed call's start")
    timed_until: float | None = Field(None, description="wall clock (Unix seconds) just after the last timed call")
    load_window_s: float | None = Field(
        None,
        description="seconds over which background_cores was measured: the timed loop, extended after it to "
        "at least 0.5 s so that 10 ms /proc/stat ticks resolve short loops",
    )
    background_share: float | None = Field(
        None, description="background_cores / the cores this process could use (its CPU affinity)"
    )
    disturbed: bool | None = Field(
        None,
        description=f"other work took more than {DISTURBED_SHARE:.0%} of the usable cores while this loop ran: the "
        "samples compete with it; never used for a headline, re-measured on the next resume",
    )
    slices: list[LatencySlice] | None = Field(
        None,
        description="the turns the samples were taken in (interleaved timing); None: one uninterrupted loop",
    )
    turn_group: str | None = Field(
        None,
        description="the id of the coordinator that granted the turns: slices of cells with the same turn_group "
        "and round were measured side by side, even cells of two runs; None: pair within (run id, repeat)",
    )


class DeviceTiming(Record):
    """The GPU side of each timed call from CUDA events, like trtexec: copy in, compute, copy out.

    `Result.latency` stays the host wall time of the whole call; these split it on the device.
    """

    h2d: Latency = Field(description="host-to-device input copies")
    compute: Latency = Field(description="the engine's or model's kernels")
    d2h: Latency = Field(description="device-to-host output copy")


class ColdStart(Record):
    load_ms: float
    first_call_ms: float
    total_ms: float = Field(description="process start to first prediction")
    launch_ms: float | None = Field(
        default=None, description="launcher start (docker run / subprocess) to process start: the isolation's cost"
    )
    launch_to_timed_ms: float | None = Field(
        default=None, description="launcher start to the first timed iteration of the job's first cell"
    )


class ClassMetrics(Record):
    precision: float
    recall: float
    f1: float
    support: int


class Quality(Record):
    examples: int
    accuracy: float
    macro_f1: float
    per_class: dict[str, ClassMetrics]
    confusion: list[list[int]] = Field(description="rows: true label, columns: predicted label")


class WorstExample(Record):
    text: str
    label: str
    reference_top: str
    variant_top: str
    kl: float
    max_abs_dlogit: float
    reference_top5: list[tuple[str, float]] = Field(default_factory=list)
    variant_top5: list[tuple[str, float]] = Field(default_factory=list)


class Agreement(Record):
    examples: int
    top1: float
    mean_kl: float
    max_abs_dlogit: float
    flips: int
    worst: list[WorstExample] = Field(default_factory=list)
    predictions: list[int] | None = Field(
        None,
        description="the variant's top-1 class id for every scored test example, in split order: lets the "
        "report compare any two backends with each other, not only with the reference",
    )


class CanaryResult(Record):
    text: str
    expected: str
    top5: list[tuple[str, float]]
    reference_top: str | None = None


class FlippedExample(Record):
    """A test example whose top-1 changed when its text was mistyped (robustness runs)."""

    text: str
    perturbed: str
    label: str
    clean_top: str
    perturbed_top: str
    reference_top: str | None = Field(None, description="the FP32 reference's top-1 on the perturbed text")


class RobustnessLevel(Record):
    """Quality at one typo rate, on the same perturbed texts for every variant."""

    rate: float = Field(description="share of words given one typo")
    examples: int
    words: int
    words_changed: int
    accuracy: float
    macro_f1: float
    agreement: float | None = Field(None, description="top-1 agreement with FP32 on the same perturbed texts")
    reference_accuracy: float | None = None
    reference_macro_f1: float | None = None
    flips: int = Field(description="examples whose top-1 differs from this variant's top-1 on the clean text")
    flipped: list[FlippedExample] = Field(default_factory=list)


class Robustness(Record):
    method: str
    seed: int
    levels: list[RobustnessLevel]


class BuildSummary(Record):
    """How the measured artefact was made, copied from its manifest (the report reads only results)."""

    builder: str
    params: dict[str, Any] = Field(default_factory=dict)
    build_seconds: float
    steps: list[str] = Field(default_factory=list)
    metrics: dict[str, float] = Field(default_factory=dict)


class GenerationAgreement(Record):
    """A causal LM's greedy tokens and next-token distributions against the FP32 reference's.

    `token_agreement` compares free-running greedy tokens position by position; `top1` and `mean_kl`
    are teacher-forced on the reference's tokens, so they stay comparable after a first divergence.
    With a random-init model this is agreement with FP32 only, never language quality.
    """

    prompts: int
    new_tokens: int
    token_agreement: float = Field(description="share of generated positions whose greedy token equals FP32's")
    exact_match: float = Field(description="share of prompts whose whole greedy continuation equals FP32's")
    first_divergence: list[int | None] = Field(description="per prompt: first differing position, None if none")
    top1: float = Field(description="teacher-forced next-token top-1 agreement with FP32")
    mean_kl: float = Field(description="teacher-forced mean KL(FP32 || variant) of the next-token distribution")
    max_kl: float


class Generation(Record):
    """Greedy generation of `new_tokens` tokens from fixed prompts, with or without the KV cache.

    `prefill` has one sample per generation (prompt -> first token); `decode` one sample per later
    token (without the cache, each "token" re-runs the whole sequence so far). Raw samples kept.
    """

    kv_cache: bool
    batch_size: int
    prompts: int
    prompt_tokens: int
    new_tokens: int
    rounds: int = Field(description="timed passes over every prompt (after untimed warm-up passes)")
    prefill: Latency
    decode: Latency = Field(description="per generated token after the first, per call (a whole batch)")
    tokens_per_s: float = Field(description="generated tokens (all sequences) / generation time, median round")
    generation_ms: float = Field(description="median time to generate new_tokens for one batch")
    tokens: list[list[int]] = Field(description="greedy token ids per prompt, from the first timed round")
    texts: list[str] = Field(default_factory=list, description="the prompts as decoded by the artefact's tokenizer")
    deterministic: bool = Field(description="every timed round produced the same tokens")
    cache_equal: bool | None = Field(
        None, description="greedy tokens with the KV cache equal those without it (same artefact, same batch size)"
    )
    agreement: GenerationAgreement | None = None
    tokenizer: str = Field("", description="where the tokenizer came from (e.g. an offline BPE, not GPT-2's)")


class SensitivityTrial(Record):
    """One trial: the listed nodes quantised to INT8, every other node FP32, scored on one split vs FP32."""

    unit: str = Field(description="the Linear layer or group quantised (module path), or 'k=N' in a search")
    nodes: list[str] = Field(description="ONNX nodes quantised to INT8 in this trial")
    macro_f1: float
    accuracy: float
    f1_drop: float = Field(description="FP32 macro-F1 minus this trial's, on the same examples")
    agreement: float = Field(description="top-1 agreement with the FP32 model on the same examples")
    agreement_drop: float = Field(description="1 - agreement")
    mean_kl: float = Field(description="mean KL(FP32 || trial) of the softmax")
    max_abs_dlogit: float
    flips: int
    quantize_seconds: float
    eval_seconds: float


class MixedPrecisionTrial(Record):
    """One candidate of a mixed-precision search: the k most sensitive units kept FP32, the rest INT8."""

    k: int
    keep_fp32: list[str]
    quantized_nodes: int
    macro_f1: float
    accuracy: float
    f1_ratio: float = Field(description="macro-F1 / FP32 macro-F1 on the same examples")
    agreement: float
    mean_kl: float
    passed: bool
    seconds: float


class MixedPrecisionSearch(Record):
    """How a mixed-precision artefact chose its FP32 layers: ranking, every trial, the choice and why."""

    mode: Literal["search", "k", "keep_fp32"]
    split: str
    examples: int
    granularity: str
    rank_by: str
    quantization: str
    units: int = Field(description="units (Linear layers or groups) in the graph")
    ranking: list[str] = Field(default_factory=list, description="most sensitive first")
    fp32_macro_f1: float
    min_f1_ratio: float
    min_agreement: float
    max_mean_kl: float | None = None
    keep_fp32: list[str]
    chosen_k: int | None = None
    passed: bool
    trials: list[MixedPrecisionTrial] = Field(default_factory=list)
    scan: list[SensitivityTrial] = Field(default_factory=list, description="the one-unit trials the ranking is from")
    why: str


class Cell(Record):
    """Coordinates of one measurement in the matrix."""

    model: str = Field(description="the matrix's model ([models.<name>])")
    variant: str = Field(description="the matrix's variant ([variants.<name>]), or `reference` for the FP32 reference")
    runner: str = Field(description="the matrix's runner ([runners.<name>]) that loaded, scored and timed it")
    backend: str = Field(description="the backend that runner drives (runners/backends/<name>.py)")
    precision: str = Field(description="the artefact's precision, as its builder's manifest states it")
    device: str = Field(description="where it ran: cpu or cuda")
    batch_size: int = Field(description="inputs per timed call")
    seq_mode: Literal["padded", "natural", "none", "kv-cache", "no-cache"] = Field(
        description="classifiers: padded/natural; causal-LM generation: kv-cache/no-cache"
    )
    seq_len: int | None = None
    repeat: int = Field(0, description="index of this measurement when a run repeats every cell (interleaved rounds)")


class Result(Record):
    """One cell measured on one machine: `results/<run-id>/<cell>.json`."""

    schema_version: Literal[2] = RESULT_VERSION
    run_id: str
    cell: Cell
    capabilities: list[Capability] = Field(
        description="what the cell's backend declared it can do (from the runner registry); the summary and "
        "the report classify cells by these, never by backend name"
    )
    artifact_key: str | None = None
    reference_key: str | None = None
    status: Status
    reason: str | None = None
    log_tail: str | None = None
    verdict: Verdict = "n/a"
    fingerprint: Fingerprint
    threads: int | None = None
    runner_options: dict[str, Any] = Field(default_factory=dict)
    latency: Latency | None = None
    device_timing: DeviceTiming | None = Field(None, description="CUDA runners: H2D / compute / D2H split")
    throughput_per_s: float | None = Field(None, description="examples per second at this batch size")
    cold_start: ColdStart | None = None
    peak_rss_bytes: int | None = None
    artifact_bytes: int | None = None
    ops_per_call: float | None = Field(None, description="counted multiply-accumulate x2 per call")
    achieved_ops_per_s: float | None = None
    peak_ops_per_s: float | None = None
    quality: Quality | None = None
    agreement: Agreement | None = None
    canary: list[CanaryResult] = Field(default_factory=list)
    generation: Generation | None = Field(None, description="causal-LM cells: greedy generation timing and checks")
    robustness: Robustness | None = None
    build: BuildSummary | None = None
    mixed_precision: MixedPrecisionSearch | None = Field(
        None, description="mixed-precision artefacts: how their FP32 layers were chosen (from the manifest)"
    )
    random_init: bool = False
    quality_eval: str | None = Field(None, description="how `quality` was scored (lengths, batch size)")
    reference_macro_f1: float | None = Field(None, description="the FP32 reference's macro-F1 on the same examples")
    timed_batches: int | None = Field(None, description="distinct input batches the timed loop cycled through")
    extra: dict[str, Any] = Field(default_factory=dict, description="free-form notes for people; nothing reads it")
    started: str
    finished: str
    gpu: GpuCounters | None = Field(
        None, description="CUDA cells: GPU memory and energy over the timed loop (each null with its reason)"
    )


class PredictionRow(Record):
    """One artefact on one runner for the `predict` input."""

    variant: str
    runner: str
    backend: str
    precision: str
    artifact_key: str
    status: Status
    reason: str | None = None
    top5: list[tuple[str, float]] = Field(default_factory=list)
    latency_ms: float | None = Field(None, description="one call after one warm-up call")
    load_ms: float | None = None
    differs_from_reference: bool | None = Field(None, description="top-1 differs from the FP32 reference's")


class Prediction(Record):
    """`python -m runners.predict TEXT`: every runnable artefact's top-5 for one input."""

    schema_version: Literal[1] = PREDICTION_VERSION
    text: str
    model: str
    reference_top: str | None = None
    rows: list[PredictionRow]
    threads: int
    fingerprint: Fingerprint
    created: str


class AnalysisRecord(Record):
    """What every analysis writes to `results/<run-id>/analyses/<name>.json`; each kind extends it."""

    schema_version: Literal[1] = ANALYSIS_VERSION
    kind: str
    run_id: str
    analysis: str = Field(description="its name in the matrix: [analyses.<name>]")
    model: str
    key: str = Field(description="hash of the analysis spec and its input artefacts; unchanged -> not rerun")
    status: Status
    reason: str | None = None
    log_tail: str | None = None
    fingerprint: Fingerprint
    random_init: bool = False
    wall_seconds: float | None = None
    started: str
    finished: str


class SensitivityResult(AnalysisRecord):
    """Layer-wise sensitivity: each unit alone quantised to INT8, scored against FP32, ranked."""

    kind: Literal["sensitivity"] = "sensitivity"
    variant: str = Field("", description="the FP32 ONNX variant scanned")
    runner: str = ""
    backend: str = ""
    device: str = "cpu"
    artifact_key: str | None = None
    reference_key: str | None = None
    split: str = "validation"
    examples: int = 0
    granularity: str = "linear"
    rank_by: str = "kl"
    quantization: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    threads: int | None = None
    runner_options: dict[str, Any] = Field(default_factory=dict)
    fp32_macro_f1: float | None = None
    fp32_accuracy: float | None = None
    all_int8: SensitivityTrial | None = Field(None, description="every unit quantised at once, for comparison")
    trials: list[SensitivityTrial] = Field(default_factory=list, description="one per unit, in graph order")
    ranking: list[str] = Field(default_factory=list, description="unit names, most sensitive first")
    tokenise_seconds: float | None = None


# Analysis kind -> its record class (`kind` tells them apart in a results directory).
ANALYSIS_RECORDS: dict[str, type[AnalysisRecord]] = {"sensitivity": SensitivityResult}

R = TypeVar("R", bound=Record)

_VERSIONS: dict[type[Record], int] = {
    Manifest: MANIFEST_VERSION,
    Result: RESULT_VERSION,
    Prediction: PREDICTION_VERSION,
    AnalysisRecord: ANALYSIS_VERSION,
    SensitivityResult: ANALYSIS_VERSION,
}


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same directory and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide records from other uids (containers)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_record(record: Record, path: Path) -> None:
    atomic_write_text(path, record.model_dump_json(indent=2) + "\n")


# -- Migrations: version N's dict -> version N+1's, applied in turn at load time ----------------------------
# Records written before a schema change still load; a migration is code, never a hand edit of old files.

# Version 1 carried these in the free-form `extra` dict; version 2 gives them typed fields.
_V1_ARCH_KINDS = {"hidden_size": "encoder", "n_layer": "decoder"}


def _v1_load(data: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any] | None:
    """Version 1's `extra.torch_loader` + `extra.recipe` as a typed load recipe (torch artefacts only)."""
    loader = extra.pop("torch_loader", "hf")
    recipe = extra.pop("recipe", None)
    if data.get("format") != "torch" or data.get("status", "ok") != "ok":
        return None
    if loader == "hf":
        return {"kind": "hf"}
    if loader in ("recipe", "lm-recipe", "bnb-llm-int8") and isinstance(recipe, dict) and "name" in recipe:
        return {"kind": recipe["name"], **{k: v for k, v in recipe.items() if k != "name"}}
    raise ValueError(f"extra.torch_loader {loader!r} with extra.recipe {recipe!r} names no known load recipe")


def _manifest_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    extra = dict(data.get("extra") or {})
    out = {**data, "schema_version": 2, "load": _v1_load(data, extra)}
    arch = extra.pop("arch", None)
    if isinstance(arch, dict):
        kinds = [kind for field, kind in _V1_ARCH_KINDS.items() if field in arch]
        out["arch"] = {"kind": kinds[0], **arch} if kinds else None
        if not kinds:
            raise ValueError(f"extra.arch {sorted(arch)} is neither an encoder's nor a decoder's shape")
    out["search"] = extra.pop("search", None)
    out["engine"] = extra.pop("engine_target", None)
    out["tokenizer_origin"] = extra.pop("tokenizer_origin", None)
    out["extra"] = extra
    return out


def _v1_capabilities(data: dict[str, Any]) -> list[str]:
    """Result schema 1 -> 2: the `capabilities` version 1 did not record.

    This migration is the one place that maps backend names to capabilities, and only for results
    written before backends declared them: each old cell is classified exactly as the code that wrote it
    classified it (the null backend measured overhead, the eager torch backend was the FP32 baseline and
    generated, onnxruntime generated, every other backend was scored).
    """
    backend = data.get("cell", {}).get("backend") if isinstance(data.get("cell"), dict) else None
    by_name = {
        "null": [Capability.MEASURES_OVERHEAD],
        "torch": [Capability.SCORES_QUALITY, Capability.FP32_BASELINE, Capability.GENERATES],
        "onnxruntime": [Capability.SCORES_QUALITY, Capability.GENERATES],
    }
    capabilities = by_name.get(str(backend), [Capability.SCORES_QUALITY])
    return [c.value for c in capabilities]


def _result_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    extra = dict(data.get("extra") or {})
    moved = {k: extra.pop(k, None) for k in ("quality_eval", "reference_macro_f1", "timed_batches")}
    return {**data, **moved, "schema_version": 2, "extra": extra, "capabilities": _v1_capabilities(data)}


_MIGRATIONS: dict[type[Record], dict[int, Callable[[dict[str, Any]], dict[str, Any]]]] = {
    Manifest: {1: _manifest_v1_to_v2},
    Result: {1: _result_v1_to_v2},
}


def migrate(kind: type[Record], data: dict[str, Any], source: str) -> dict[str, Any]:
    """`data` brought up to `kind`'s current schema version, one migration at a time."""
    steps = _MIGRATIONS.get(kind, {})
    version = data.get("schema_version")
    while isinstance(version, int) and version in steps:
        try:
            data = steps[version](data)
        except (ValueError, TypeError, AttributeError) as e:
            raise RecordError(f"{source}: cannot migrate {kind.__name__} schema_version {version}: {e}") from None
        version = data["schema_version"]
    return data


def parse_record(kind: type[R], data: Any, source: str) -> R:
    """Validate `data` as `kind`; unknown versions and fields give one line naming `source`.

    Older versions with a migration are upgraded first (`migrate`).
    """
    if not isinstance(data, dict):
        raise RecordError(f"{source}: expected a JSON object, got {type(data).__name__}")
    data = migrate(kind, data, source)
    version = data.get("schema_version")
    expected = _VERSIONS[kind]
    older = _MIGRATIONS.get(kind, {})
    if version != expected:
        raise RecordError(
            f"{source}: unsupported {kind.__name__} schema_version {version!r}; this quantmatrix reads "
            f"version {expected}" + (f" and migrates {', '.join(map(str, sorted(older)))}" if older else "")
        )
    try:
        return kind.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        more = f" (+{e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise RecordError(f"{source}: {loc}: {err['msg']}{more}") from None


def read_record(kind: type[R], path: Path) -> R:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecordError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise RecordError(f"{path}: not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    return parse_record(kind, data, str(path))


def read_analysis(path: Path) -> AnalysisRecord:
    """An analysis result of any kind, validated as the record class its `kind` names."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"{path}: not a JSON analysis record ({e})") from None
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in ANALYSIS_RECORDS:
        raise RecordError(f"{path}: kind: unknown analysis kind {kind!r}; expected one of {sorted(ANALYSIS_RECORDS)}")
    return parse_record(ANALYSIS_RECORDS[kind], data, str(path))


def json_schemas() -> dict[str, dict[str, Any]]:
    """The exported JSON Schemas, keyed by file name under `schemas/`."""
    return {
        "manifest.schema.json": Manifest.model_json_schema(),
        "result.schema.json": Result.model_json_schema(),
        "prediction.schema.json": Prediction.model_json_schema(),
        **{f"{kind}.schema.json": cls.model_json_schema() for kind, cls in ANALYSIS_RECORDS.items()},
    }


def render_schema(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


class GpuCounters(Record):
    """GPU memory and energy of one CUDA cell's timed loop; a figure that cannot be had is null with its reason.

    Memory: the backend allocator's peak (PyTorch's caching allocator; the TensorRT runner's own
    buffers plus engine activations) and the device's used memory from NVML, which counts every
    process and the CUDA context. Energy: NVML's total-energy counter (Volta and newer) read around
    the timed loop; it updates every few tens of ms, so short loops carry a large relative error.
    """

    device_name: str | None = None
    allocator_peak_bytes: int | None = None
    allocator_reason: str | None = None
    device_used_bytes: int | None = Field(None, description="NVML used memory, the larger of loop start and end")
    device_total_bytes: int | None = None
    memory_reason: str | None = None
    energy_j: float | None = Field(None, description="energy the GPU used over the timed loop, in joules")
    joules_per_inference: float | None = Field(None, description="energy_j / timed calls (one call = one batch)")
    average_watts: float | None = Field(None, description="energy_j / window_s")
    window_s: float | None = Field(None, description="wall time between the two energy readings")
    calls: int | None = None
    energy_reason: str | None = None


Result.model_rebuild()
