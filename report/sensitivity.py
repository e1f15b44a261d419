"""The sensitivity analyses' and mixed-precision searches' typed tables (data only, no HTML).

Sensitivity: every `SensitivityResult` found under `<run>/analyses/`, its trials in ranking order.
Mixed precision: every measured variant whose result carries a `mixed_precision` search, with its
trials and its measured latency next to the FP32 ONNX model's and the fully quantised one's on the
same machine, runner and cell, so the page shows whether the chosen model is also the fast one.
"""

from __future__ import annotations

from typing import Any

from quantmatrix.records import AnalysisRecord, Result, SensitivityResult
from report.data import Loaded, machine_name


def sensitivity(records: list[tuple[AnalysisRecord, str]]) -> list[dict[str, Any]]:
    """One section per sensitivity record (`(record, raw link)` pairs): header facts and ranked trial rows."""
    sections = []
    for record, link in records:
        if not isinstance(record, SensitivityResult):
            continue
        r = record
        order = {unit: i for i, unit in enumerate(r.ranking)}
        rows: list[dict[str, Any]] = [
            {
                "rank": order.get(t.unit, len(order)) + 1, "unit": t.unit, "nodes": len(t.nodes),
                "macro_f1": t.macro_f1, "f1_drop": t.f1_drop, "agreement": t.agreement,
                "agreement_drop": t.agreement_drop, "mean_kl": t.mean_kl, "max_abs_dlogit": t.max_abs_dlogit,
                "flips": t.flips, "seconds": t.quantize_seconds + t.eval_seconds,
            }
            for t in r.trials
        ]  # fmt: skip
        rows.sort(key=lambda x: x["rank"])
        sections.append({
            "name": r.analysis, "model": r.model, "machine": r.fingerprint.machine_id,
            "machine_name": machine_name(r.fingerprint), "status": r.status, "reason": r.reason, "r": r,
            "rows": rows, "raw": link, "random_init": r.random_init,
        })  # fmt: skip
    return sections


def _p50(loaded: Loaded, like: Result, variant: str) -> float | None:
    for r in loaded.results:
        if (
            r.status == "ok" and r.latency is not None and r.fingerprint.machine_id == like.fingerprint.machine_id
            and r.run_id == like.run_id and r.cell.model == like.cell.model and r.cell.variant == variant
            and r.cell.runner == like.cell.runner and r.cell.batch_size == like.cell.batch_size
            and r.cell.seq_mode == like.cell.seq_mode and r.cell.repeat == like.cell.repeat
        ):  # fmt: skip
            return r.latency.p50
    return None


def _source_variants(loaded: Loaded, like: Result) -> tuple[str | None, str | None]:
    """(FP32 ONNX variant, fully quantised dynamic INT8 variant) measured in the same run as `like`."""
    fp32 = full = None
    for r in loaded.results:
        if r.run_id != like.run_id or r.cell.model != like.cell.model or r.build is None:
            continue
        if r.build.builder == "onnx-fp32":
            fp32 = fp32 or r.cell.variant
        params = r.build.params
        if r.build.builder == "ort-int8-dynamic" and not params.get("fusion") and not params.get("op_types"):
            mixed = like.mixed_precision
            same = mixed is not None and bool(params.get("per_channel")) == ("per channel" in mixed.quantization)
            if same:
                full = full or r.cell.variant
    return fp32, full


def mixed_precision(loaded: Loaded) -> list[dict[str, Any]]:
    """One entry per (machine, run, model, variant, runner) whose artefact came from a mixed-precision search."""
    seen: dict[tuple[str, str, str, str, str], dict[str, Any]] = {}
    for i, r in enumerate(loaded.results):
        if r.status != "ok" or r.mixed_precision is None:
            continue
        key = (r.fingerprint.machine_id, r.run_id, r.cell.model, r.cell.variant, r.cell.runner)
        fp32, full = _source_variants(loaded, r)
        latency = {
            "config": f"batch {r.cell.batch_size}, {r.cell.seq_mode}",
            "mixed": r.latency.p50 if r.latency else None,
            "fp32": _p50(loaded, r, fp32) if fp32 else None, "fp32_variant": fp32,
            "full": _p50(loaded, r, full) if full else None, "full_variant": full,
        }  # fmt: skip
        entry = seen.get(key)
        if entry is None:
            s = r.mixed_precision
            seen[key] = {
                "model": r.cell.model, "variant": r.cell.variant, "runner": r.cell.runner,
                "machine": r.fingerprint.machine_id, "machine_name": machine_name(r.fingerprint), "s": s,
                "index": i, "verdict": r.verdict, "macro_f1": r.quality.macro_f1 if r.quality else None,
                "agreement": r.agreement.top1 if r.agreement else None, "latency": [latency],
                "trials": [t.model_dump() | {"outcome": "pass" if t.passed else "below target",
                                             "chosen": t.k == s.chosen_k} for t in s.trials],
            }  # fmt: skip
        else:
            entry["latency"].append(latency)
    return list(seen.values())
