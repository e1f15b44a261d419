"""Helpers shared by the causal-LM ONNX builders: Optimum export and the check against the FP32 reference."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from builders._onnx import cap_ir_version, ort_session
from quantmatrix.causal_lm import OrtLM, greedy, kl_next_token, teacher_forced
from quantmatrix.errors import QuantmatrixError


def export_lm(model_dir: Path, output: Path, opset: int, with_past: bool) -> str:
    """Export a HF causal LM to one ONNX file (task text-generation[-with-past]); returns the task."""
    from optimum.exporters.onnx import main_export

    task = "text-generation-with-past" if with_past else "text-generation"
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings; the check below compares the numbers
        main_export(
            str(model_dir), tmp, task=task, opset=opset, do_validation=False, local_files_only=True,
            library_name="transformers",
        )  # fmt: skip
        exported = Path(tmp) / "model.onnx"
        if not exported.is_file():
            raise QuantmatrixError(
                f"optimum wrote no model.onnx (found: {sorted(p.name for p in Path(tmp).iterdir())})"
            )
        if any(Path(tmp).glob("*.onnx_data")) or any(Path(tmp).glob("*.data")):
            raise QuantmatrixError("optimum wrote external data; one self-contained model.onnx is expected")
        exported.rename(output)
    cap_ir_version(output)
    return task


def reference_eval(ref_path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The FP32 reference's prompts, greedy tokens and teacher-forced logits (eval/generation_*.npy)."""
    load = [
        np.load(ref_path / "eval" / f"generation_{n}.npy", allow_pickle=False) for n in ("prompts", "tokens", "logits")
    ]
    return load[0], load[1], load[2]


def check_torch_lm(stepper: Any, ref_path: Path) -> tuple[dict[str, float], str]:
    """A quantised PyTorch LM against FP32: greedy tokens with the cache, teacher-forced top-1 and KL.

    Returns the manifest metrics and the build step that states them.
    """
    prompts, ref_tokens, ref_logits = reference_eval(ref_path)
    tokens, _ = greedy(stepper, prompts, ref_tokens.shape[1], use_cache=True)
    logits = teacher_forced(stepper, prompts, ref_tokens)
    check = {
        "check_prompts": float(len(prompts)),
        "check_token_agreement": round(float((tokens == ref_tokens).mean()), 6),
        "check_top1": round(float((logits.argmax(-1) == ref_logits.argmax(-1)).mean()), 6),
        "check_mean_kl": float(kl_next_token(ref_logits, logits).mean()),
    }
    step = f"check: greedy token agreement {check['check_token_agreement']:.3f}, mean KL {check['check_mean_kl']:.2e}"
    return check, step


def check_lm(model_path: Path, ref_path: Path) -> dict[str, float]:
    """Greedy tokens (with the cache where the graph has one, and without) and teacher-forced logits vs FP32."""
    return check_graph_lm(OrtLM(ort_session(model_path)), ref_path)


def check_graph_lm(stepper: Any, ref_path: Path) -> dict[str, float]:
    """`check_lm` of any graph stepper (an OrtLM over ONNX Runtime or OpenVINO)."""
    prompts, ref_tokens, ref_logits = reference_eval(ref_path)
    logits = teacher_forced(stepper, prompts, ref_tokens)
    if logits.shape != ref_logits.shape:
        raise QuantmatrixError(
            f"teacher-forced logits shape {list(logits.shape)} differs from the reference's {list(ref_logits.shape)}"
        )
    no_cache, _ = greedy(stepper, prompts, ref_tokens.shape[1], use_cache=False)
    check: dict[str, float] = {
        "check_prompts": float(len(prompts)),
        "check_max_abs_logit_diff": round(float(np.abs(logits - ref_logits).max()), 6),
        "check_top1": round(float((logits.argmax(-1) == ref_logits.argmax(-1)).mean()), 6),
        "check_mean_kl": float(kl_next_token(ref_logits, logits).mean()),
        "check_token_agreement": round(float((no_cache == ref_tokens).mean()), 6),
    }
    if stepper.has_past:
        cached, _ = greedy(stepper, prompts, ref_tokens.shape[1], use_cache=True)
        check["check_cache_equal"] = float(np.array_equal(cached, no_cache))
    return check


def lm_io(model_path: Path) -> dict[str, Any]:
    """Facts about an exported causal-LM graph for the manifest."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    past = [i.name for i in graph.input if i.name.startswith("past_key_values.")]
    return {"with_past": bool(past), "past_inputs": len(past)}


def materialise_lm_head(model: Any) -> str | None:
    """Give the output projection its own [hidden, vocab] initializer when it reads the tied embedding.

    Optimum stores the tied input-embedding/output weight once and reaches the output MatMul through
    a Transpose. Quantised as is, that MatMul is either left in FP32 (its B is not a constant) or, when
    the embedding Gather is quantised, fed by DequantizeLinear -> Transpose of the whole matrix on
    every token; either way INT8 gains nothing on the most expensive matrix of a decode step.
    Returns what was done, or None when the output MatMul already has its own initializer.
    """
    from onnx import numpy_helper

    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    head = producers.get("logits")
    if head is None or head.op_type not in ("MatMul", "Gemm"):
        raise QuantmatrixError(
            f"the logits output is not produced by a MatMul/Gemm ({head.op_type if head else 'no node'})"
        )
    weight = head.input[1]
    if weight in inits:
        return None
    transpose = producers.get(weight)
    if transpose is None or transpose.op_type != "Transpose" or transpose.input[0] not in inits:
        raise QuantmatrixError(f"the output MatMul's weight {weight!r} is neither an initializer nor a transposed one")
    source = inits[transpose.input[0]]
    array = numpy_helper.to_array(source)
    perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), list(reversed(range(array.ndim))))
    name = "lm_head.weight.materialised"
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array.transpose(perm)), name=name))
    head.input[1] = name
    if not any(weight in n.input for n in graph.node) and not any(o.name == weight for o in graph.output):
        graph.node.remove(transpose)
    return f"{source.name} {list(array.shape)} -> {name} {list(array.transpose(perm).shape)} (own initializer)"


PROJECTIONS = ("MatMul", "Gemm", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")


def lm_head_path(model_path: Path) -> dict[str, Any]:
    """The output projection feeding `logits` and where its weight comes from (an initializer, or ops per call)."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    producers = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    # Breadth-first from the logits back to the nearest projection (past the Cast/Mul of dequantisation).
    frontier, head = [producers.get("logits")], None
    for _ in range(4):
        head = next((n for n in frontier if n is not None and n.op_type in PROJECTIONS), None)
        if head is not None:
            break
        frontier = [producers.get(i) for n in frontier if n is not None for i in n.input]
    if head is None:
        return {"op": None, "weight_is_initializer": False, "weight_dtype": None, "computed_per_call": []}
    weight = head.input[1]
    upstream, cur = [], producers.get(weight)
    while cur is not None:
        upstream.append(cur.op_type)
        cur = next((producers[i] for i in cur.input if i in producers), None)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(inits[weight].data_type).name if weight in inits else None
    return {
        "op": head.op_type,
        "weight": weight,
        "weight_is_initializer": weight in inits,
        "weight_dtype": dtype,
        "computed_per_call": upstream,  # ops recomputing the weight on every call, nearest first (empty: none)
    }
