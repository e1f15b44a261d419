"""Helpers shared by the ONNX builders: IR version, graph I/O, tokenised batches, validation."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from quantmatrix.errors import QuantmatrixError
from quantmatrix.inputs import encode as encode_texts
from quantmatrix.records import TensorSpec

# onnx >= 1.23 stamps IR version 14 on new models; onnxruntime 1.31 loads up to 13 (and TensorRT
# 10 parsers less). Opsets up to 21 need no more than IR 10.
MAX_IR_VERSION = 10
ONNX_DTYPES = {1: "float32", 7: "int64", 6: "int32", 10: "float16", 3: "int8", 2: "uint8", 11: "float64"}


def save_model(model: Any, path: Path) -> None:
    """Save an onnx ModelProto as one file with an IR version onnxruntime and TensorRT accept."""
    import onnx

    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
    imported = {o.domain for o in model.opset_import}
    for domain in sorted({n.domain for n in model.graph.node if n.domain} - imported - {"ai.onnx"}):
        model.opset_import.append(onnx.helper.make_opsetid(domain, 1))  # contrib ops (fusion output)
    onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path))


def export_onnx(model_dir: Path, output: Path, opset: int) -> None:
    """Export a HF sequence classifier directory to one ONNX file with Optimum (IR version capped)."""
    from optimum.exporters.onnx import main_export

    with tempfile.TemporaryDirectory(dir=output.parent) as tmp, warnings.catch_warnings():
        # Tracing warns about shape-dependent Python branches (TracerWarning); every caller checks
        # the exported logits numerically against the reference, which is what matters.
        warnings.simplefilter("ignore")
        main_export(
            str(model_dir),
            tmp,
            task="text-classification",
            opset=opset,
            do_validation=False,
            local_files_only=True,
            library_name="transformers",
        )
        exported = Path(tmp) / "model.onnx"
        if not exported.is_file():
            found = sorted(p.name for p in Path(tmp).iterdir())
            raise QuantmatrixError(f"optimum wrote no model.onnx (found: {found})")
        exported.rename(output)
    cap_ir_version(output)


def cap_ir_version(path: Path) -> None:
    import onnx

    model = onnx.load(str(path))
    if model.ir_version > MAX_IR_VERSION:
        save_model(model, path)


def graph_io(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output tensor specs as the graph declares them (symbolic dims kept as names)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def spec(v: Any) -> TensorSpec:
        t = v.type.tensor_type
        shape: list[int | str] = [d.dim_param or d.dim_value for d in t.shape.dim]
        return TensorSpec(name=v.name, dtype=ONNX_DTYPES.get(t.elem_type, str(t.elem_type)), shape=shape)

    return [spec(v) for v in model.graph.input], [spec(v) for v in model.graph.output]


def opset_of(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def encode(tokenizer: Any, texts: Sequence[str], max_length: int, padding: str | bool = True) -> dict[str, np.ndarray]:
    return encode_texts(tokenizer, texts, None, max_length, padding=padding)


def batches(tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    for i in range(0, len(texts), batch_size):
        yield encode(tokenizer, texts[i : i + batch_size], max_length)


def ort_session(path: Path, threads: int = 0) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def ort_logits(path: Path, tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int = 32) -> np.ndarray:
    session = ort_session(path)
    names = {i.name for i in session.get_inputs()}
    out = [
        session.run(None, {k: v for k, v in feed.items() if k in names})[0]
        for feed in batches(tokenizer, texts, max_length, batch_size)
    ]
    return np.concatenate(out).astype(np.float32)


def graph_logits(
    module: Any, tokenizer: Any, names: Sequence[str], texts: Sequence[str], max_length: int, batch_size: int = 32
) -> np.ndarray:
    """Logits of a torch module called by input name (a PT2E graph returns a tuple, a HF model an output)."""
    import torch

    got = []
    with torch.no_grad():
        for feed in batches(tokenizer, texts, max_length, batch_size):
            out = module(**{k: torch.from_numpy(feed[k]) for k in names})
            got.append((out.logits if hasattr(out, "logits") else out[0]).float().numpy())
    return np.concatenate(got)


def compare(logits: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Agreement of a variant's logits with the reference's on the same inputs."""
    if logits.shape != reference.shape:
        raise QuantmatrixError(f"output shape {logits.shape} differs from the reference's {reference.shape}")
    return {
        "max_abs_logit_diff": float(np.abs(logits - reference).max()),
        "top1_agreement": float((logits.argmax(-1) == reference.argmax(-1)).mean()),
    }


def reference_check(ctx: Any, logits_of: Callable[[list[str]], np.ndarray], examples: int) -> dict[str, float]:
    """A variant's logits (`logits_of(texts)`) vs the reference artefact's saved test logits, first test examples."""
    ref_logits = np.load(ctx.reference.path / "eval" / "test_logits.npy", allow_pickle=False)
    texts = [e.text for e in ctx.data.split("test")[:examples]]
    return {f"check_{k}": round(v, 6) for k, v in compare(logits_of(texts), ref_logits[: len(texts)]).items()} | {
        "check_examples": len(texts)
    }


AGREEMENT = {"check_top1_agreement": "top-1 agreement", "check_token_agreement": "greedy token agreement"}


def require_fp32_match(check: dict[str, float], atol: float, agreement: str, what: str) -> None:
    """An FP32 export or conversion changes no prediction: every logit within `atol` of the reference's,
    full `agreement` (a key of AGREEMENT), and the KV-cache path equal to the plain one where it was checked."""
    if check["check_max_abs_logit_diff"] > atol or check[agreement] < 1.0:
        raise QuantmatrixError(
            f"{what} differs from the reference: max |Δlogit| {check['check_max_abs_logit_diff']:.2e} "
            f"(atol {atol}), {AGREEMENT[agreement]} {check[agreement]:.3f}"
        )
    if check.get("check_cache_equal", 1.0) < 1.0:
        raise QuantmatrixError(f"{what}: greedy tokens with the KV cache differ from those without it")


def validation_check(ctx: Any, model_path: Path, tokenizer: Any, examples: int) -> dict[str, float]:
    """`reference_check` of the ONNX model at `model_path` (ONNX Runtime, CPU)."""
    return reference_check(ctx, lambda texts: ort_logits(model_path, tokenizer, texts, ctx.model.max_length), examples)


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def op_counts(path: Path) -> dict[str, int]:
    """How many nodes of each quantisation-relevant type the graph holds (shows what was quantised)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    keep = (
        "MatMul",
        "MatMulInteger",
        "DynamicQuantizeLinear",
        "QuantizeLinear",
        "DequantizeLinear",
        "QAttention",
        "Attention",
        "Gemm",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "QGemm",
    )
    return {k: v for k, v in sorted(counts.items()) if k in keep}


def model_manifest(
    ctx: Any,
    params: Any,
    *,
    format: str,
    entry: str,
    io: tuple[list[TensorSpec], list[TensorSpec]],
    facts: dict[str, Any],
    precision: str,
    device: str,
    steps: list[str],
    metrics: dict[str, float],
    extra: dict[str, Any],
    **fields: Any,
) -> Any:
    """The manifest of a model file served with tokenizer/ beside it: its own (inputs, outputs) `io`, and
    `facts` about the file ahead of the builder's `extra`."""
    inputs, outputs = io
    return ctx.manifest(
        format=format, precision=precision, params=params, entry=entry, tokenizer="tokenizer",
        io_inputs=inputs, io_outputs=outputs, device=device, steps=steps, metrics=metrics,
        extra={**facts, **extra}, **fields,
    )  # fmt: skip


def onnx_manifest(ctx: Any, params: Any, model_path: Path, **fields: Any) -> Any:
    """The manifest every ONNX builder writes (`model_manifest`'s `fields`): graph I/O, opset and op counts."""
    facts = {"opset": opset_of(model_path), "op_counts": op_counts(model_path)}
    return model_manifest(
        ctx, params, format="onnx", entry=model_path.name, io=graph_io(model_path), facts=facts, **fields
    )
