"""Layer sensitivity of an ONNX classifier: its Linear layers as units, dynamic INT8 of chosen units, scoring.

Shared by the sensitivity analysis (`runners/analyses/sensitivity.py`) and the mixed-precision
builder (`builders/ort_int8_mixed.py`): which nodes form a unit (one Linear, or one block's
attention / FFN group), quantising exactly a set of nodes, one tokenised split reused by every
trial, and each trial scored against the FP32 model's logits on it. onnx/onnxruntime load lazily.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypedDict

import numpy as np

from quantmatrix.errors import QuantmatrixError
from quantmatrix.inputs import int64_inputs
from quantmatrix.metrics import agreement, quality
from quantmatrix.progress import Progress
from quantmatrix.records import SensitivityTrial

Granularity = Literal["linear", "group"]
RankBy = Literal["kl", "agreement", "macro_f1"]
GRANULARITIES: tuple[str, ...] = ("linear", "group")
RANK_BY: tuple[str, ...] = ("kl", "agreement", "macro_f1")
Predict = Callable[[Mapping[str, np.ndarray]], np.ndarray]

# `bert.encoder.layer.3.attention.self.query` -> block `bert.encoder.layer.3`, rest `attention.self.query`
# (also `layers.N` and GPT-style `h.N`).
_BLOCK = re.compile(r"^(?P<block>(?:.*\.)?(?:layer|layers|h|block|blocks)\.\d+)\.(?P<rest>.+)$")


@dataclass(frozen=True)
class Unit:
    """What one trial quantises: a Linear layer (one node) or a group of them, named by module path."""

    name: str
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class QuantSettings:
    """How a unit is quantised: ONNX Runtime dynamic INT8, the same options as `ort-int8-dynamic`."""

    per_channel: bool = False
    reduce_range: bool = False
    weight_type: Literal["int8", "uint8"] = "int8"

    def describe(self) -> str:
        return (
            f"dynamic INT8, weights {self.weight_type} {'per channel' if self.per_channel else 'per tensor'}"
            f"{', reduce_range' if self.reduce_range else ''}"
        )


def module_path(node_name: str) -> str:
    """`/bert/encoder/layer.0/attention/self/query/MatMul` -> `bert.encoder.layer.0.attention.self.query`.

    The exporter names each node after the torch module that produced it, so the unit names are
    the model's own module names (and work as torch module filters too).
    """
    parts = [p for p in node_name.split("/") if p]
    if len(parts) > 1:
        parts = parts[:-1]  # the op itself: MatMul, Gemm
    return ".".join(parts)


def group_of(module: str) -> str:
    """The block group a Linear belongs to: `<block>.attention` (Q/K/V/O), `<block>.ffn` (in/out), else `head`."""
    m = _BLOCK.match(module)
    if m is None:
        return "head"  # pooler, classifier: everything outside the repeated blocks
    rest = m["rest"]
    kind = "attention" if ("attention" in rest or "attn" in rest) else "ffn"
    return f"{m['block']}.{kind}"


def linear_nodes(model_path: Path) -> list[tuple[str, str]]:
    """(node name, module path) of every MatMul/Gemm with a constant weight: what dynamic INT8 quantises."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    constants = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    found = []
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in weights | constants:
            if not node.name:
                raise QuantmatrixError(f"{model_path.name}: a {node.op_type} node has no name; cannot select it")
            found.append((node.name, module_path(node.name)))
    if not found:
        raise QuantmatrixError(f"{model_path.name}: no MatMul/Gemm with a constant weight (nothing to quantise)")
    return found


def units(model_path: Path, granularity: Granularity) -> list[Unit]:
    """The graph's Linear layers in graph order, one unit each, or grouped per block (attention / FFN / head)."""
    if granularity not in GRANULARITIES:
        raise QuantmatrixError(f"granularity {granularity!r}: expected one of {list(GRANULARITIES)}")
    nodes = linear_nodes(model_path)
    grouped: dict[str, list[str]] = {}
    for node, module in nodes:
        name = module if granularity == "linear" else group_of(module)
        grouped.setdefault(name, []).append(node)
    return [Unit(name=name, nodes=tuple(members)) for name, members in grouped.items()]


def ort_dynamic_int8(
    src: Path, dst: Path, settings: QuantSettings, *, op_types: Sequence[str] = (), nodes: Sequence[str] | None = None
) -> None:
    """ONNX Runtime's dynamic INT8 of `src` with `settings`' weight options, to `dst`: the one quantiser call
    of the scan and the `ort-int8-dynamic*` and `qat` builders. `op_types` empty: every type it supports;
    `nodes` None: every node (an empty list means every node to the quantiser too)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        op_types_to_quantize=list(op_types) or None,
        per_channel=settings.per_channel,
        reduce_range=settings.reduce_range,
        weight_type=QuantType.QInt8 if settings.weight_type == "int8" else QuantType.QUInt8,
        nodes_to_quantize=None if nodes is None else list(nodes),
    )


def quantize(src: Path, dst: Path, settings: QuantSettings, nodes: Sequence[str]) -> None:
    """Dynamic INT8 of exactly `nodes` of `src` (every other node stays FP32), saved to `dst`."""
    import onnx

    if not nodes:
        # quantize_dynamic reads an empty node list as "every node": an empty trial is the FP32 model.
        onnx.save_model(onnx.load(str(src)), str(dst))
        return
    # The quantiser first splits each Gemm into `<name>_MatMul` + Add and selects by the new name.
    ort_dynamic_int8(src, dst, settings, nodes=[n for node in nodes for n in (node, f"{node}_MatMul")])


@dataclass(frozen=True)
class Encoded:
    """One split tokenised once: batches sorted by length (little padding), and the way back to split order."""

    batches: tuple[dict[str, np.ndarray], ...]
    order: np.ndarray  # row i of the concatenated batch outputs is example order[i]
    seconds: float

    def logits(self, predict: Predict) -> np.ndarray:
        out = np.concatenate([np.asarray(predict(b), dtype=np.float32) for b in self.batches])
        back = np.empty_like(out)
        back[self.order] = out
        return back


def encode_split(
    tokenizer: Any, texts: Sequence[str], input_names: Sequence[str], max_length: int, batch_size: int = 32
) -> Encoded:
    t0 = time.perf_counter()
    if not texts:
        raise QuantmatrixError("the split to score is empty")
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    lengths = np.array([len(ids) for ids in enc["input_ids"]])
    order = np.argsort(lengths, kind="stable")
    batches = []
    for i in range(0, len(texts), batch_size):
        idx = order[i : i + batch_size]
        padded = tokenizer.pad({k: [enc[k][j] for j in idx] for k in enc}, return_tensors="np")
        batches.append(int64_inputs(padded, input_names))
    return Encoded(batches=tuple(batches), order=order, seconds=time.perf_counter() - t0)


@dataclass(frozen=True)
class Scorer:
    """Scores one trial's logits against the FP32 model's logits and the labels of the same split."""

    fp32_logits: np.ndarray
    y: np.ndarray
    labels: tuple[str, ...]

    @property
    def fp32_macro_f1(self) -> float:
        return quality(self.y, self.fp32_logits.argmax(-1), self.labels).macro_f1

    @property
    def fp32_accuracy(self) -> float:
        return float((self.fp32_logits.argmax(-1) == self.y).mean())

    def trial(
        self, unit: str, nodes: Sequence[str], logits: np.ndarray, *, quantize_s: float, eval_s: float
    ) -> SensitivityTrial:
        q = quality(self.y, logits.argmax(-1), self.labels)
        texts = [""] * len(self.y)  # worst examples are not kept per trial
        a = agreement(self.fp32_logits, logits, texts, self.y.tolist(), list(self.labels), worst=0)
        return SensitivityTrial(
            unit=unit,
            nodes=list(nodes),
            macro_f1=q.macro_f1,
            accuracy=q.accuracy,
            f1_drop=self.fp32_macro_f1 - q.macro_f1,
            agreement=a.top1,
            agreement_drop=1.0 - a.top1,
            mean_kl=a.mean_kl,
            max_abs_dlogit=a.max_abs_dlogit,
            flips=a.flips,
            quantize_seconds=round(quantize_s, 3),
            eval_seconds=round(eval_s, 3),
        )


def run_trial(
    src: Path,
    work: Path,
    settings: QuantSettings,
    unit: str,
    nodes: Sequence[str],
    session_for: Callable[[Path], Predict],
    encoded: Encoded,
    scorer: Scorer,
) -> SensitivityTrial:
    """Quantise `nodes` of `src`, open one session on the result, score the tokenised split, delete the model."""
    path = work / "trial.onnx"
    t0 = time.perf_counter()
    quantize(src, path, settings, nodes)
    t1 = time.perf_counter()
    try:
        logits = encoded.logits(session_for(path))
    finally:
        path.unlink(missing_ok=True)
    return scorer.trial(unit, nodes, logits, quantize_s=t1 - t0, eval_s=time.perf_counter() - t1)


class ScanParams(Protocol):
    """What a scan's params say about its units and ranking (the analysis's and the mixed-precision builder's)."""

    @property
    def granularity(self) -> str: ...

    @property
    def rank_by(self) -> str: ...


class ScanFields(TypedDict):
    """What a sensitivity result and a mixed-precision search both record about their scan, by their field names."""

    split: str
    examples: int
    granularity: str
    rank_by: str
    quantization: str
    fp32_macro_f1: float
    ranking: list[str]


def scan_fields(
    params: ScanParams, settings: QuantSettings, *, split: str, examples: int, scorer: Scorer, ranking: list[str]
) -> ScanFields:
    """The scan's fields for `Record(**scan_fields(...), other fields...)`: `examples` of `split` scored."""
    return ScanFields(
        split=split,
        examples=examples,
        granularity=params.granularity,
        rank_by=params.rank_by,
        quantization=f"onnxruntime quantize_dynamic: {settings.describe()}",
        fp32_macro_f1=scorer.fp32_macro_f1,
        ranking=ranking,
    )


def rank(trials: Sequence[SensitivityTrial], by: RankBy) -> list[str]:
    """Unit names, most sensitive first: by mean KL, agreement drop or macro-F1 drop, the others breaking ties."""
    keys: dict[str, Callable[[SensitivityTrial], tuple[float, ...]]] = {
        "kl": lambda t: (-t.mean_kl, -t.agreement_drop, -t.f1_drop),
        "agreement": lambda t: (-t.agreement_drop, -t.mean_kl, -t.f1_drop),
        "macro_f1": lambda t: (-t.f1_drop, -t.mean_kl, -t.agreement_drop),
    }
    if by not in keys:
        raise QuantmatrixError(f"rank_by {by!r}: expected one of {list(RANK_BY)}")
    return [t.unit for t in sorted(trials, key=lambda t: (*keys[by](t), t.unit))]


def scan(
    src: Path,
    work: Path,
    settings: QuantSettings,
    all_units: Sequence[Unit],
    session_for: Callable[[Path], Predict],
    encoded: Encoded,
    scorer: Scorer,
    log: Callable[[str], None] = print,
) -> list[SensitivityTrial]:
    """One trial per unit: only that unit quantised, everything else FP32."""
    trials = []
    with Progress(len(all_units), "sensitivity scan", unit="unit") as progress:
        for i, unit in enumerate(all_units, 1):
            t = run_trial(src, work, settings, unit.name, unit.nodes, session_for, encoded, scorer)
            log(
                f"  [{i:2}/{len(all_units)}] {unit.name}: macro-F1 {t.macro_f1:.4f} (drop {t.f1_drop:+.4f}), "
                f"agreement {t.agreement:.4f}, KL {t.mean_kl:.2e} ({t.quantize_seconds + t.eval_seconds:.1f}s)"
            )
            trials.append(t)
            progress.update(i)
    return trials
