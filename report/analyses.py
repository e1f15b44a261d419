"""The analyses' typed tables, from result JSONs only: robustness under typos and PTQ vs QAT. Data, no HTML.

Robustness: every result with a `robustness` section, one row per (variant @ runner, typo rate).
PTQ vs QAT: per (model, machine, runner), the FP32 variant, each PTQ dynamic and PTQ static variant
and each QAT variant measured there, with macro-F1 against FP32, the INT8 format each one uses
(from its build params) and QAT's training cost (from its build record): "when is PTQ enough?".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from quantmatrix.records import Result
from report.data import Loaded, machine_name

# What each builder is, for the comparison (builders not listed here are not part of it).
ROLES = {
    "reference": "FP32",
    "onnx-fp32": "FP32",
    "ort-int8-dynamic": "PTQ dynamic",
    "torch-int8-dynamic": "PTQ dynamic",
    "ort-int8-static": "PTQ static",
    "torch-int8-pt2e": "PTQ static",
    "qat": "QAT",
    "qat-pt2e": "QAT",
}
ROLE_ORDER = ("FP32", "PTQ dynamic", "PTQ static", "QAT")


def _ok(loaded: Loaded) -> Iterator[tuple[int, Result]]:
    for i, r in enumerate(loaded.results):
        if r.status == "ok" and r.quality is not None:
            yield i, r


def _first_per_series(loaded: Loaded, want: Any) -> dict[tuple[str, str, str, str], tuple[int, Result]]:
    """(machine, model, variant, runner) -> its first ok result (quality does not depend on the cell)."""
    out: dict[tuple[str, str, str, str], tuple[int, Result]] = {}
    for i, r in sorted(_ok(loaded), key=lambda x: (x[1].cell.batch_size, x[1].cell.seq_mode != "natural")):
        if want(r):
            out.setdefault((r.fingerprint.machine_id, r.cell.model, r.cell.variant, r.cell.runner), (i, r))
    return out


# -- robustness -------------------------------------------------------------------------------------


def robustness(loaded: Loaded) -> list[dict[str, Any]]:
    """Sections per (model, machine): rows per series and rate, and the flipped examples."""
    found = _first_per_series(loaded, lambda r: r.robustness is not None)
    sections: dict[tuple[str, str], dict[str, Any]] = {}
    for (machine, model, variant, runner), (i, r) in sorted(found.items()):
        assert r.robustness is not None and r.quality is not None
        sec = sections.setdefault(
            (model, machine),
            {"model": model, "machine": machine, "machine_name": machine_name(r.fingerprint), "rows": [],
             "flipped": [], "method": r.robustness.method, "seed": r.robustness.seed},
        )  # fmt: skip
        clean = next((lv for lv in r.robustness.levels if lv.rate == 0), None)
        for lv in r.robustness.levels:
            sec["rows"].append({
                "series": f"{variant} @ {runner}", "variant": variant, "runner": runner, "index": i,
                "precision": r.cell.precision, "rate": lv.rate, "examples": lv.examples,
                "words_changed": lv.words_changed, "words": lv.words,
                "share": lv.words_changed / lv.words if lv.words else 0.0,
                "accuracy": lv.accuracy, "macro_f1": lv.macro_f1, "agreement": lv.agreement,
                "reference_macro_f1": lv.reference_macro_f1,
                "drop": (clean.macro_f1 - lv.macro_f1) if clean is not None else None,
                "flips": lv.flips, "flip_share": lv.flips / lv.examples if lv.examples else 0.0,
            })  # fmt: skip
            if lv.flipped:
                sec["flipped"].append({"series": f"{variant} @ {runner}", "rate": lv.rate, "flips": lv.flips,
                                       "examples": lv.flipped, "index": i})  # fmt: skip
    return list(sections.values())


# -- PTQ vs QAT -------------------------------------------------------------------------------------


def int8_format(r: Result) -> str:
    """The INT8 scheme a variant uses, from its build params, in words that match across builders."""
    if r.build is None:
        return "?"
    p, b = r.build.params, r.build.builder
    if ROLES.get(b) == "FP32":
        return "fp32"
    weights = "per-channel" if p.get("per_channel") else "per-tensor"
    if b in ("ort-int8-dynamic", "qat"):
        return f"dynamic activations, int8 weights {weights}"
    if b == "ort-int8-static":
        return f"static activations ({p.get('calibration_method', '?')}), int8 weights {weights}"
    if b == "torch-int8-dynamic":
        return f"dynamic activations, int8 weights ({p.get('engine', '?')})"
    if b in ("torch-int8-pt2e", "qat-pt2e"):
        return "static activations, int8 weights (PT2E x86 inductor)"
    return "?"


@dataclass
class Comparison:
    model: str
    machine: str
    machine_name: str
    runner: str
    fp32: dict[str, Any] | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    qat_format: str | None = None
    answer: str = ""
    ptq_enough: bool | None = None


def _latency(loaded: Loaded, machine: str, model: str, variant: str, runner: str) -> tuple[float | None, str]:
    """p50 at the smallest batch measured (natural length first): one latency per row, labelled."""
    cells = [
        r for r in loaded.results
        if r.status == "ok" and r.latency is not None and r.fingerprint.machine_id == machine
        and (r.cell.model, r.cell.variant, r.cell.runner) == (model, variant, runner)
    ]  # fmt: skip
    if not cells:
        return None, ""
    best = min(cells, key=lambda r: (r.cell.batch_size, r.cell.seq_mode != "natural"))
    assert best.latency is not None
    return best.latency.p50, f"batch {best.cell.batch_size}, {best.cell.seq_mode}"


def ptq_vs_qat(loaded: Loaded, pass_ratio: float = 0.99) -> list[Comparison]:
    """One comparison per (model, machine, runner) that measured at least one QAT variant.

    `pass_ratio` is the fallback pass rule for results that carry no verdict thresholds; the verdict
    each result recorded (from its matrix thresholds) decides pass/drift/fail.
    """
    found = _first_per_series(loaded, lambda r: r.build is not None and r.build.builder in ROLES)
    groups: dict[tuple[str, str, str], list[tuple[int, Result]]] = {}
    for (machine, model, _variant, runner), item in found.items():
        groups.setdefault((model, machine, runner), []).append(item)
    out = []
    for (model, machine, runner), items in sorted(groups.items()):
        roles = {ROLES[r.build.builder] for _, r in items if r.build}
        if "QAT" not in roles:
            continue
        rows: list[dict[str, Any]] = []
        for i, r in items:
            assert r.build is not None and r.quality is not None
            p50, cell = _latency(loaded, machine, model, r.cell.variant, runner)
            m = r.build.metrics
            rows.append({
                "role": ROLES[r.build.builder], "variant": r.cell.variant, "builder": r.build.builder,
                "format": int8_format(r), "macro_f1": r.quality.macro_f1, "accuracy": r.quality.accuracy,
                "agreement": r.agreement.top1 if r.agreement else None, "verdict": r.verdict,
                "p50_ms": p50, "latency_cell": cell, "build_seconds": r.build.build_seconds,
                "train_examples": m.get("train_examples"), "train_epochs": m.get("train_epochs"),
                "train_steps": m.get("train_steps"), "train_seconds": m.get("train_seconds"),
                "index": i, "same_format": False, "ratio": None,
            })  # fmt: skip
        rows.sort(key=lambda x: (ROLE_ORDER.index(x["role"]), x["variant"]))
        fp32 = next((x for x in rows if x["role"] == "FP32"), None)
        ref_f1 = fp32["macro_f1"] if fp32 else None
        if ref_f1 is None:  # another backend's FP32: the reference macro-F1 every run records
            r0 = items[0][1]
            ref_f1 = r0.reference_macro_f1
        for x in rows:
            x["ratio"] = x["macro_f1"] / ref_f1 if ref_f1 else None
        qat = [x for x in rows if x["role"] == "QAT"]
        qat_format = qat[0]["format"] if qat else None
        for x in rows:
            x["same_format"] = x["role"] != "FP32" and x["format"] == qat_format
        c = Comparison(model, machine, machine_name(items[0][1].fingerprint), runner, fp32, rows, qat_format)
        ptq = [x for x in rows if x["role"].startswith("PTQ")]
        passing = [
            x for x in ptq if x["verdict"] == "pass" or (x["verdict"] == "n/a" and (x["ratio"] or 0) >= pass_ratio)
        ]
        best_ptq = max(ptq, key=lambda x: x["macro_f1"], default=None)
        best_qat = max(qat, key=lambda x: x["macro_f1"])
        if best_ptq is None:
            c.answer = "no PTQ variant was measured on this runner"
        elif passing:
            fastest = min(passing, key=lambda x: x["p50_ms"] if x["p50_ms"] is not None else float("inf"))
            c.ptq_enough = True
            c.answer = (
                f"PTQ is enough here: {len(passing)} of {len(ptq)} PTQ variants pass (macro-F1 at least "
                f"{pass_ratio:.0%} of FP32 and high agreement) without training; the fastest passing one is "
                f"{fastest['variant']}. QAT ({best_qat['variant']}) reaches {best_qat['ratio']:.1%} of FP32 for "
                f"{best_qat['train_seconds'] or 0:.0f} s of training."
                if best_qat["ratio"] is not None
                else f"PTQ is enough here: {len(passing)} of {len(ptq)} PTQ variants pass."
            )
        else:
            c.ptq_enough = False
            better = best_qat["macro_f1"] > best_ptq["macro_f1"]
            c.answer = (
                f"PTQ is not enough here: no PTQ variant passes (best {best_ptq['variant']}, "
                f"{best_ptq['ratio'] or 0:.1%} of FP32); QAT ({best_qat['variant']}) "
                + (
                    f"recovers to {best_qat['ratio'] or 0:.1%}"
                    if better
                    else f"does not do better ({best_qat['ratio'] or 0:.1%})"
                )
                + (f" for {best_qat['train_seconds']:.0f} s of training." if best_qat["train_seconds"] else ".")
            )
        out.append(c)
    return out
