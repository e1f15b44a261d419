"""Sensitivity-guided mixed precision: ONNX Runtime dynamic INT8 of every Linear layer but the most sensitive.

Steps: score the FP32 ONNX model on one split (tokenised once) -> rank the units (each quantised
alone, as the sensitivity analysis does) -> keep the k most sensitive FP32 and quantise the rest,
for an explicit `keep_fp32` list, a fixed `k`, or the smallest k whose macro-F1 >= `min_f1_ratio`
x FP32 (searched k = 0, 1, 2, ... so the answer is the most-quantised passing model, not the first
found) -> check against the reference. Every trial is recorded in the manifest.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from builders import BuildContext, builder, link_tree
from builders._onnx import load_tokenizer, onnx_manifest, ort_session, save_model, validation_check
from quantmatrix.errors import QuantmatrixError
from quantmatrix.progress import Progress
from quantmatrix.records import Manifest, MixedPrecisionSearch, MixedPrecisionTrial, SensitivityTrial


@dataclass(frozen=True)
class OrtInt8MixedParams:
    keep_fp32: tuple[str, ...] = ()  # explicit units kept FP32 (module paths / group names): no scan, no search
    k: int | None = None  # keep the k most sensitive units FP32: a scan, no search
    # Otherwise search: the smallest k whose macro-F1 >= min_f1_ratio x FP32 and agreement >= min_agreement.
    min_f1_ratio: float = 0.99
    min_agreement: float = 0.0  # top-1 agreement with the FP32 model on the split (0: not required)
    max_mean_kl: float | None = None  # mean KL(FP32 || candidate) on the split at most this (None: not required)
    granularity: Literal["linear", "group"] = "linear"
    rank_by: Literal["kl", "agreement", "macro_f1"] = "kl"
    split: Literal["validation", "calibration", "train"] = "validation"  # never the test split runs score
    examples: int = 0  # split examples scored per trial (0: all)
    per_channel: bool = False
    reduce_range: bool = False
    weight_type: Literal["int8", "uint8"] = "int8"
    check_examples: int = 128

    def __post_init__(self) -> None:
        if self.keep_fp32 and self.k is not None:
            raise ValueError("give keep_fp32 or k, not both")
        if self.k is not None and self.k < 0:
            raise ValueError("k must not be negative")
        if not 0 < self.min_f1_ratio <= 1 or not 0 <= self.min_agreement <= 1:
            raise ValueError("min_f1_ratio must be in (0, 1] and min_agreement in [0, 1]")
        if self.examples < 0:
            raise ValueError("examples must not be negative")


def _mixed_trial(
    t: SensitivityTrial, k: int, keep: list[str], fp32_f1: float, params: OrtInt8MixedParams
) -> MixedPrecisionTrial:
    ratio = t.macro_f1 / fp32_f1 if fp32_f1 > 0 else 1.0
    return MixedPrecisionTrial(
        k=k,
        keep_fp32=keep,
        quantized_nodes=len(t.nodes),
        macro_f1=t.macro_f1,
        accuracy=t.accuracy,
        f1_ratio=ratio,
        agreement=t.agreement,
        mean_kl=t.mean_kl,
        passed=ratio >= params.min_f1_ratio
        and t.agreement >= params.min_agreement
        and (params.max_mean_kl is None or t.mean_kl <= params.max_mean_kl),
        seconds=round(t.quantize_seconds + t.eval_seconds, 3),
    )


@builder("ort-int8-mixed", params=OrtInt8MixedParams, output_format="onnx")
def build(ctx: BuildContext, params: OrtInt8MixedParams) -> Manifest:
    from quantmatrix import sensitivity as sens

    src = ctx.source
    src.require("ort-int8-mixed quantises an FP32 ONNX model", format="onnx", precision="fp32")
    model_in = src.file()
    tokenizer = load_tokenizer(src.path / (src.manifest.tokenizer or "tokenizer"))
    examples = list(ctx.data.split(params.split))
    if params.examples:
        examples = examples[: params.examples]
    names = [t.name for t in src.manifest.io_inputs] or list(tokenizer.model_input_names)
    encoded = sens.encode_split(tokenizer, [e.text for e in examples], names, ctx.model.max_length)
    labels = tuple(src.manifest.id2label[str(i)] for i in range(len(src.manifest.id2label)))

    def session_for(path: Path) -> sens.Predict:
        session = ort_session(path)
        output = session.get_outputs()[0].name
        return lambda feed: session.run([output], dict(feed))[0]

    scorer = sens.Scorer(encoded.logits(session_for(model_in)), np.array([e.label for e in examples]), labels)
    fp32_f1 = scorer.fp32_macro_f1
    settings = sens.QuantSettings(params.per_channel, params.reduce_range, params.weight_type)
    all_units = sens.units(model_in, params.granularity)
    by_name = {u.name: u for u in all_units}
    unknown = [u for u in params.keep_fp32 if u not in by_name]
    if unknown:
        raise QuantmatrixError(
            f"keep_fp32: unknown unit {unknown[0]!r} at granularity {params.granularity!r}; the graph has "
            f"{', '.join(by_name)}"
        )
    ctx.log(f"  {len(all_units)} units; FP32 macro-F1 {fp32_f1:.4f} on {len(examples)} {params.split} examples")

    def nodes_without(keep: list[str]) -> list[str]:
        return [n for u in all_units if u.name not in keep for n in u.nodes]

    scan: list[SensitivityTrial] = []
    ranking: list[str] = []
    trials: list[MixedPrecisionTrial] = []
    chosen: MixedPrecisionTrial | None = None
    with tempfile.TemporaryDirectory(dir=ctx.out.parent) as tmp:
        work = Path(tmp)

        def trial(k: int, keep: list[str]) -> MixedPrecisionTrial:
            t = sens.run_trial(model_in, work, settings, f"k={k}", nodes_without(keep), session_for, encoded, scorer)
            m = _mixed_trial(t, k, keep, fp32_f1, params)
            trials.append(m)
            ctx.log(
                f"  k={k}: macro-F1 {m.macro_f1:.4f} ({m.f1_ratio:.4f} of FP32), agreement {m.agreement:.4f} "
                f"-> {'pass' if m.passed else 'below target'}"
            )
            return m

        if params.keep_fp32:
            mode: Literal["search", "k", "keep_fp32"] = "keep_fp32"
            chosen = trial(len(params.keep_fp32), list(params.keep_fp32))
        else:
            ctx.log(f"  ranking {len(all_units)} units by {params.rank_by} (each quantised alone)")
            scan = sens.scan(model_in, work, settings, all_units, session_for, encoded, scorer, log=ctx.log)
            ranking = sens.rank(scan, params.rank_by)
            if params.k is not None:
                mode = "k"
                if params.k > len(ranking):
                    raise QuantmatrixError(f"k={params.k}: the graph has only {len(ranking)} units")
                chosen = trial(params.k, ranking[: params.k])
            else:
                mode = "search"
                # Stops at the first passing k, so the total is an upper bound and an ETA would mislead.
                with Progress(len(ranking) + 1, "mixed-precision search", unit="k", eta=False) as progress:
                    for k in range(len(ranking) + 1):
                        progress.update(k)
                        if (candidate := trial(k, ranking[:k])).passed:
                            chosen = candidate
                            break
    assert chosen is not None  # every mode runs at least one trial; k = all units is the FP32 model
    keep = chosen.keep_fp32
    if mode == "search":
        why = (
            f"k={chosen.k} is the smallest k on the {params.rank_by} ranking whose model reaches macro-F1 >= "
            f"{params.min_f1_ratio} x FP32{f' and agreement >= {params.min_agreement}' if params.min_agreement else ''}"
            f"{f' and mean KL <= {params.max_mean_kl:g}' if params.max_mean_kl is not None else ''}"
            f" on {len(examples)} {params.split} examples (k = 0, 1, ... tried in order, every trial recorded): "
            "of all passing candidates it keeps the fewest layers FP32, so it runs the most MatMuls as INT8 "
            "and is the fastest candidate wherever INT8 MatMuls beat FP32 ones; its run results time it."
        )
    elif mode == "k":
        why = f"k={chosen.k} fixed by the matrix: the {chosen.k} most sensitive units ({params.rank_by}) stay FP32"
    else:
        why = f"keep_fp32 fixed by the matrix: {', '.join(keep)} stay FP32"
    if mode == "search" and chosen.k == len(all_units):
        why += " No partially quantised model met the target: every unit stays FP32."

    model_path = ctx.out / "model.onnx"
    sens.quantize(model_in, model_path, settings, nodes_without(keep))
    import onnx

    save_model(onnx.load(str(model_path)), model_path)
    link_tree(src.path / (src.manifest.tokenizer or "tokenizer"), ctx.out / "tokenizer")
    check = validation_check(ctx, model_path, load_tokenizer(ctx.out / "tokenizer"), params.check_examples)
    search = MixedPrecisionSearch(
        **sens.scan_fields(
            params, settings, split=params.split, examples=len(examples), scorer=scorer, ranking=ranking
        ),
        mode=mode,
        units=len(all_units),
        min_f1_ratio=params.min_f1_ratio,
        min_agreement=params.min_agreement,
        max_mean_kl=params.max_mean_kl,
        keep_fp32=keep,
        chosen_k=chosen.k,
        passed=chosen.passed,
        trials=trials,
        scan=scan,
        why=why,
    )
    steps = [
        f"score: FP32 model on {len(examples)} {params.split} examples (tokenised once), macro-F1 {fp32_f1:.4f}",
    ]
    if scan:
        steps.append(f"rank: {len(scan)} units ({params.granularity}) each quantised alone, by {params.rank_by}")
    steps += [
        f"select: {mode}, {len(trials)} trial(s); keep FP32: {', '.join(keep) or 'nothing'}",
        f"quantize: {settings.describe()} of {len(nodes_without(keep))} nodes",
        f"check: top-1 agreement {check['check_top1_agreement']:.3f} on {check['check_examples']} test examples",
    ]
    metrics: dict[str, float] = {
        **check,
        "kept_fp32_units": float(len(keep)),
        "quantized_nodes": float(len(nodes_without(keep))),
        "search_macro_f1": chosen.macro_f1,
        "search_f1_ratio": chosen.f1_ratio,
        "search_agreement": chosen.agreement,
    }
    extra: dict[str, Any] = {"quantizer": "onnxruntime.quantization.quantize_dynamic (nodes_to_quantize)"}
    return onnx_manifest(
        ctx, params, model_path, precision="int8", device="cpu", steps=steps, metrics=metrics, extra=extra,
        search=search,
        notes=[why] + ([] if chosen.passed else ["the kept model does not meet the target on the split"]),
    )  # fmt: skip
