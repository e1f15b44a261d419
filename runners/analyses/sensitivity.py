"""Layer-wise sensitivity: quantise one Linear layer (or one block's attention / FFN group) at a time
to dynamic INT8 on ONNX Runtime, score each on one split against the FP32 model, rank the units.

The split is tokenised once (length-sorted batches); each trial opens one session through the
analysis runner's own `load` (its threads and graph options), so the numbers come from the backend
the matrix names.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from quantmatrix.errors import QuantmatrixError
from quantmatrix.records import SensitivityResult
from quantmatrix.spec import AnalysisSpec, RunnerSpec, VariantSpec, parse_params
from runners import LoadRequest, registry
from runners.analyses import AnalysisContext, analysis
from runners.job import threads_for


@dataclass(frozen=True)
class SensitivityParams:
    granularity: Literal["linear", "group"] = "linear"  # one Linear per trial, or a block's attention/FFN group
    rank_by: Literal["kl", "agreement", "macro_f1"] = "kl"  # the drop that orders the ranking
    per_channel: bool = False
    reduce_range: bool = False
    weight_type: Literal["int8", "uint8"] = "int8"
    examples: int = 0  # examples of the split scored (0: all)
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.examples < 0 or self.batch_size < 1:
            raise ValueError("examples must be >= 0 and batch_size >= 1")


def check(
    spec: AnalysisSpec, variants: Mapping[str, VariantSpec], runners: Mapping[str, RunnerSpec]
) -> tuple[str, str] | None:
    if len(spec.variants) != 1:
        return "variants", 'a sensitivity scan takes exactly one FP32 ONNX variant, e.g. variants = ["onnx-fp32"]'
    if spec.variants[0] == "reference":
        return "variants[0]", "the reference is a torch model; scan its FP32 ONNX export (e.g. 'onnx-fp32')"
    if len(spec.runners) != 1:
        return "runners", 'a sensitivity scan takes exactly one runner, e.g. runners = ["ort-cpu"]'
    runner = runners[spec.runners[0]]
    info = registry().get(runner.backend)
    if info is not None and "onnx" not in info.formats:
        return (
            "runners[0]",
            f"runner {runner.name!r} has backend {runner.backend!r}, which loads {'/'.join(info.formats)}; the "
            "scan writes ONNX files (quantised with ONNX Runtime's quantizer) and needs a backend that loads onnx",
        )
    return None


@analysis("sensitivity", params=SensitivityParams, record=SensitivityResult, check=check)
def run(ctx: AnalysisContext, params: SensitivityParams) -> SensitivityResult:
    from transformers import AutoTokenizer

    from quantmatrix import sensitivity as sens
    from quantmatrix.data import load_dataset

    spec = ctx.spec
    variant, runner = spec.variants[0], ctx.matrix.runners[spec.runners[0]]
    info = registry()[runner.backend]
    src_dir, manifest = ctx.load(variant)
    _, reference = ctx.load("reference")
    if manifest.format != "onnx" or manifest.precision != "fp32":
        raise QuantmatrixError(
            f"{ctx.matrix.path}: analyses.{spec.name}.variants[0]: {variant!r} is a {manifest.precision} "
            f"{manifest.format} artefact; the scan needs an FP32 ONNX model"
        )
    if manifest.id2label != reference.id2label:
        raise QuantmatrixError(f"artefact {manifest.key}: label map differs from the reference's")
    runner_params = parse_params(info.params, dict(runner.params), f"{ctx.matrix.path}: runners.{runner.name}.params")
    threads = threads_for(ctx.measure, dict(runner.params))
    model = ctx.matrix.models[spec.model]
    data = load_dataset(ctx.matrix.dataset_for(model), base_dir=ctx.matrix.path.parent)
    examples = list(data.split(spec.split))
    if params.examples:
        examples = examples[: params.examples]
    labels = tuple(reference.id2label[str(i)] for i in range(len(reference.id2label)))
    tokenizer = AutoTokenizer.from_pretrained(str(src_dir / (manifest.tokenizer or "tokenizer")))
    src = src_dir / (manifest.entry or "model.onnx")
    settings = sens.QuantSettings(params.per_channel, params.reduce_range, params.weight_type)
    options: dict[str, object] = {}

    def session_for(path: Path) -> sens.Predict:
        request = LoadRequest(
            path=path.parent,
            manifest=manifest.model_copy(update={"entry": path.name}),
            device=runner.device,
            threads=threads,
            params=runner_params,
        )
        session = info.load(request)
        options.update(session.options())
        return session.predict

    all_units = sens.units(src, params.granularity)
    names = [t.name for t in manifest.io_inputs] or list(tokenizer.model_input_names)
    encoded = sens.encode_split(tokenizer, [e.text for e in examples], names, model.max_length, params.batch_size)
    y = np.array([e.label for e in examples], dtype=np.int64)
    ctx.log(
        f"  {len(all_units)} units ({params.granularity}) on {len(examples)} {spec.split} examples, "
        f"{len(encoded.batches)} batches tokenised in {encoded.seconds:.2f}s; {settings.describe()}"
    )
    t0 = time.perf_counter()
    fp32 = encoded.logits(session_for(src))
    scorer = sens.Scorer(fp32_logits=fp32, y=y, labels=labels)
    ctx.log(f"  FP32: macro-F1 {scorer.fp32_macro_f1:.4f} ({time.perf_counter() - t0:.1f}s)")
    with tempfile.TemporaryDirectory(prefix="sensitivity-") as tmp:
        work = Path(tmp)
        every = [n for u in all_units for n in u.nodes]
        all_int8 = sens.run_trial(src, work, settings, "all", every, session_for, encoded, scorer)
        ctx.log(f"  all INT8: macro-F1 {all_int8.macro_f1:.4f}, agreement {all_int8.agreement:.4f}")
        trials = sens.scan(src, work, settings, all_units, session_for, encoded, scorer, log=ctx.log)
    ranking = sens.rank(trials, params.rank_by)
    ctx.log(f"  most sensitive ({params.rank_by}): {', '.join(ranking[:5])}")
    return SensitivityResult(
        **ctx.base(status="ok", random_init=manifest.random_init),
        variant=variant,
        runner=runner.name,
        backend=runner.backend,
        device=runner.device,
        artifact_key=manifest.key,
        reference_key=reference.key,
        **sens.scan_fields(params, settings, split=spec.split, examples=len(examples), scorer=scorer, ranking=ranking),
        params=asdict(params),
        threads=threads,
        runner_options=dict(options),
        fp32_accuracy=scorer.fp32_accuracy,
        all_int8=all_int8,
        trials=trials,
        tokenise_seconds=round(encoded.seconds, 3),
    )
