"""The site's pages: one function each, registered with `@page`, turning the table into template data.

A page function returns the data its template (`templates/<slug>.html`) needs, or None when there is
nothing to show, in which case the page is neither written nor linked. That is how pages for results
that not every run has (generation with and without KV cache, layer sensitivity, robustness under
typos) are added: one function here, one template, and they appear only when such results exist.
Data only: no HTML is built here (the templates escape everything they print).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from quantmatrix.history import STEP_PCT, history
from quantmatrix.machine_lock import DISTURBED_SHARE
from quantmatrix.records import Result
from quantmatrix.stats import ALPHA
from quantmatrix.summary import CellSummary, speedup_interval
from report import charts
from report.data import Loaded, machine_name


@dataclass
class Chart:
    id: str
    kind: str
    spec: dict[str, Any]
    machine: str | None = None
    fallback: str | None = None  # file stem under charts/ for the static PNG/SVG copies, main charts only


@dataclass
class Context:
    """Everything a page function may read, and the charts the pages ask for."""

    loaded: Loaded
    table: pd.DataFrame
    charts: list[Chart] = field(default_factory=list)
    rows: list[CellSummary] = field(default_factory=list)  # the table's rows as typed summaries (same order)
    _records: dict[Any, dict[str, Any]] | None = field(default=None, repr=False)

    def records(self, rows: pd.DataFrame) -> list[dict[str, Any]]:
        """Rows of the table (any selection of it) as fresh plain dicts, NaN as None (templates test `is none`)."""
        if self._records is None:
            clean = self.table.astype(object).where(self.table.notna(), None)
            self._records = dict(zip(self.table.index, clean.to_dict("records"), strict=True))
        return [dict(self._records[i]) for i in rows.index]

    def chart(self, kind: str, spec: dict[str, Any], machine: str | None = None, fallback: str | None = None) -> Chart:
        chart = Chart(f"chart-{len(self.charts)}", kind, spec, machine, fallback)
        self.charts.append(chart)
        return chart

    def link(self, index: int) -> str:
        return self.loaded.sources[index].link

    def links(self, members: tuple[int, ...]) -> list[str]:
        return [self.link(i) for i in members]

    def first_ok(self, members: tuple[int, ...]) -> tuple[int, Result] | None:
        for i in members:
            r = self.loaded.results[i]
            if r.status == "ok":
                return i, r
        return None

    @property
    def multi_machine(self) -> bool:
        return len(self.loaded.machines()) > 1


@dataclass(frozen=True)
class Page:
    slug: str
    title: str
    build: Callable[[Context], dict[str, Any] | None]

    @property
    def file(self) -> str:
        return "index.html" if self.slug == "overview" else f"{self.slug}.html"


PAGES: list[Page] = []


def page(slug: str, title: str) -> Callable[[Callable[[Context], dict[str, Any] | None]], Any]:
    def register(build: Callable[[Context], dict[str, Any] | None]) -> Callable[[Context], dict[str, Any] | None]:
        PAGES.append(Page(slug, title, build))
        return build

    return register


def _by_model_machine(table: pd.DataFrame) -> Iterator[tuple[str, str, pd.DataFrame]]:
    for (model, machine), rows in table.groupby(["model", "machine"], sort=True):
        yield str(model), str(machine), rows


def _measured(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[~rows["measures_overhead"].astype(bool) & rows["p50_ms"].notna()]


@page("overview", "Overview")
def overview(ctx: Context) -> dict[str, Any] | None:
    models = []
    for model, rows in ctx.table.groupby("model", sort=True):
        ordered = rows.sort_values(["machine", "batch_size", "seq_mode", "p50_ms"], na_position="last")
        records = ctx.records(ordered)
        for rec in records:
            rec["raw"] = ctx.links(rec["members"])
        models.append({"name": str(model), "rows": records, "random_init": bool(rows["random_init"].any())})
    return {"models": models, "answers": _answers(ctx), "disturbed_share": f"{DISTURBED_SHARE:.0%}"}


def _answers(ctx: Context) -> list[dict[str, Any]]:
    """Per machine, model and setting: the fastest passing INT8 variant, against FP32 eager and against FP32
    on its own backend, each speed-up with its bootstrap CI (what users run the matrix to learn)."""
    out = []
    t = ctx.table
    for (machine, model, batch, seq, run), rows in t.groupby(["machine", "model", "batch_size", "seq_mode", "run_id"]):
        clean = (rows["disturbed"] == 0) & ~rows["baseline_disturbed"].astype(bool)  # never a disturbed headline
        passing = rows[
            rows["precision"].str.contains("int8") & (rows["verdict"] == "pass") & rows["speedup"].notna() & clean
        ]
        if passing.empty:
            continue
        best = ctx.records(passing.sort_values("p50_ms").head(1))[0]
        same = rows[
            (rows["backend"] == best["backend"]) & (rows["precision"] == "fp32") & rows["p50_ms"].notna() & clean
        ]
        backend_fp32 = None
        if not same.empty:
            base = ctx.records(same.sort_values("p50_ms").head(1))[0]
            ci = speedup_interval(ctx.loaded.results, base["members"], best["members"], ctx.loaded.samples)
            backend_fp32 = {"label": base["label"], "p50_ms": base["p50_ms"],
                            "speedup": base["p50_ms"] / best["p50_ms"], "ci": ci}  # fmt: skip
        out.append({"machine": machine, "model": model, "batch_size": batch, "seq_mode": seq, "run_id": run,
                    "best": best, "backend_fp32": backend_fp32})  # fmt: skip
    return out


@page("history", "History")
def history_page(ctx: Context) -> dict[str, Any] | None:
    """Per cell measured in two or more runs: p50 with its CI and macro-F1 against commit/date, steps marked."""
    series = history(ctx.loaded.results, ctx.rows, ctx.loaded.samples)
    if not series:
        return None
    cells = []
    for s in series:
        machine, model, variant, runner, batch, seq = s.key
        points = [{"row": p.row, "when": p.when, "step": p.step,
                   "commit": (p.row.git_commit or "unknown")[:10], "raw": ctx.links(p.row.members)}
                  for p in s.points]  # fmt: skip
        cells.append({"machine": machine, "model": model, "variant": variant, "runner": runner,
                      "config": f"batch {batch}, {seq}", "points": points, "steps": s.steps})  # fmt: skip
    runs = len({p.row.run_id for s in series for p in s.points})
    return {"cells": cells, "runs": runs, "step_pct": STEP_PCT, "alpha": ALPHA,
            "stepped": sum(s.steps > 0 for s in series)}  # fmt: skip


@page("pareto", "Accuracy × latency")
def pareto(ctx: Context) -> dict[str, Any] | None:
    sections = []
    for model, machine, rows in _by_model_machine(ctx.table):
        points = _measured(rows)
        points = points[points["macro_f1"].notna()]
        if points.empty:
            continue
        title = f"{model} on {machine}: macro-F1 vs p50 latency"
        chart = ctx.chart("pareto", charts.pareto(points, title), machine, fallback=f"pareto-{model}-{machine}")
        sections.append({"model": model, "machine": machine, "chart": chart})
    return {"sections": sections} if sections else None


def _canary_rows(ctx: Context, members: list[tuple[str, tuple[int, ...]]]) -> pd.DataFrame:
    rows = []
    for series, indices in members:
        found = ctx.first_ok(indices)
        if found is None:
            continue
        for c in found[1].canary:
            for label, p in c.top5:
                rows.append({"prompt": c.text, "expected": c.expected, "series": series, "class": label,
                             "probability": round(float(p), 4)})  # fmt: skip
    return pd.DataFrame(rows)


def _pairwise(ctx: Context, series: dict[str, tuple[int, ...]]) -> pd.DataFrame:
    """Top-1 agreement and label flips between every two variant @ runner series, from their predictions.

    Every series scores the same test split, so two prediction lists compare example by example; the
    reference's own predictions are recovered from any variant's agreement (it stores none of its own).
    """
    preds: dict[str, list[int]] = {}
    for label, members in series.items():
        found = ctx.first_ok(members)
        if found is not None and found[1].agreement is not None and found[1].agreement.predictions is not None:
            preds[label] = found[1].agreement.predictions
    rows = []
    for a, pa in preds.items():
        for b, pb in preds.items():
            if len(pa) != len(pb):
                continue  # scored on different splits (eval_examples differ): not comparable
            flips = sum(x != y for x, y in zip(pa, pb, strict=True))
            rows.append({"a": a, "b": b, "agreement": round(1 - flips / len(pa), 4) if pa else None, "flips": flips})
    return pd.DataFrame(rows)


@page("drift", "Drift")
def drift(ctx: Context) -> dict[str, Any] | None:
    sections = []
    for model, machine, rows in _by_model_machine(ctx.table):
        measured = rows[rows["agreement"].notna()]
        if measured.empty:
            continue
        entries = []
        for rec in ctx.records(measured.sort_values(["agreement", "variant", "runner", "config"])):
            i, r = ctx.first_ok(rec["members"]) or (rec["members"][0], ctx.loaded.results[rec["members"][0]])
            entries.append(rec | {"a": r.agreement, "raw": ctx.link(i)})
        # One canary series per variant @ runner: the first batch/seq setting that has canary results.
        series: dict[str, tuple[int, ...]] = {}
        for rec in ctx.records(rows[rows["status"] == "ok"].sort_values(["variant", "runner", "batch_size"])):
            if not rec["measures_overhead"]:
                series.setdefault(rec["label"], rec["members"])
        canary_data = _canary_rows(ctx, list(series.items()))
        worst = {}
        for rec in entries:
            if rec["a"].worst and rec["label"] not in worst:
                worst[rec["label"]] = rec
        pairs = _pairwise(ctx, series)
        sections.append(
            {
                "model": model,
                "machine": machine,
                "rows": entries,
                "pairs": ctx.chart("pairwise", charts.pairwise_agreement(pairs, f"{model} on {machine}: top-1 "
                                                                                  "agreement between backends"),
                                   machine) if not pairs.empty else None,
                "worst": list(worst.values()),
                "matrix": ctx.chart("agreement", charts.agreement_matrix(measured, f"{model} on {machine}: top-1 "
                                                                                    "agreement with FP32"), machine),
                "canary": ctx.chart("canary", charts.canary(canary_data, f"{model} on {machine}: canary prompts"),
                                    machine) if not canary_data.empty else None,
            }
        )  # fmt: skip
    return {"sections": sections} if sections else None


@page("quality", "Quality")
def quality(ctx: Context) -> dict[str, Any] | None:
    sections = []
    seen: set[tuple[str, str, str, str]] = set()
    for model, machine, rows in _by_model_machine(ctx.table):
        entries = []
        for rec in ctx.records(rows.sort_values(["variant", "runner", "batch_size", "seq_mode"])):
            found = ctx.first_ok(rec["members"])
            key = (model, machine, rec["variant"], rec["runner"])
            if found is None or found[1].quality is None or key in seen:
                continue
            seen.add(key)
            q = found[1].quality
            labels = list(q.per_class)
            if len(labels) != len(q.confusion):
                labels = [str(i) for i in range(len(q.confusion))]
            peak = max((v for row in q.confusion for v in row), default=0) or 1
            shades = [[round(v / peak, 3) for v in row] for row in q.confusion]
            entries.append(rec | {"q": q, "labels": labels, "shades": shades, "raw": ctx.link(found[0]),
                                  "eval": found[1].quality_eval})  # fmt: skip
        if entries:
            sections.append({"model": model, "machine": machine, "entries": entries})
    return {"sections": sections} if sections else None


@page("roofline", "Roofline")
def roofline(ctx: Context) -> dict[str, Any] | None:
    sections = []
    for model, machine, rows in _by_model_machine(ctx.table):
        measured = _measured(rows)
        measured = measured[measured["achieved_ops_per_s"].notna() & measured["peak_ops_per_s"].notna()]
        if measured.empty:
            continue
        title = f"{model} on {machine}: achieved vs measured peak ops/s"
        records = ctx.records(measured.sort_values(["config", "achieved_ops_per_s"], ascending=[True, False]))
        for rec in records:
            rec["raw"] = ctx.links(rec["members"])
        sections.append({"model": model, "machine": machine, "rows": records,
                         "chart": ctx.chart("roofline", charts.roofline(measured, title), machine)})  # fmt: skip
    return {"sections": sections} if sections else None


def _baseline_decode(ctx: Context, rows: pd.DataFrame) -> dict[tuple[int, str], float]:
    """(batch, run id) -> decode p50 of the FP32 reference on the eager baseline backend without the KV cache."""
    base = rows[rows["fp32_baseline"].astype(bool) & (rows["seq_mode"] == "no-cache")]
    return {(int(r["batch_size"]), str(r["run_id"])): float(r["p50_ms"]) for r in ctx.records(base) if r["p50_ms"]}


@page("generation", "Generation")
def generation(ctx: Context) -> dict[str, Any] | None:
    """Causal-LM cells: prefill and per-token latency, tokens/s, with vs without KV cache, FP32 vs INT8."""
    sections = []
    for model, machine, rows in _by_model_machine(ctx.table):
        rows = rows[rows["seq_mode"].isin(["kv-cache", "no-cache"])]
        if rows.empty:
            continue
        baseline = _baseline_decode(ctx, rows)
        entries = []
        ordered = rows.sort_values(["batch_size", "seq_mode", "p50_ms"], na_position="last")
        for rec in ctx.records(ordered):
            found = ctx.first_ok(rec["members"])
            g = found[1].generation if found else None
            base = baseline.get((rec["batch_size"], rec["run_id"]))
            entries.append(rec | {
                "g": g, "raw": ctx.links(rec["members"]),
                "vs_eager_no_cache": base / rec["p50_ms"] if base and rec["p50_ms"] else None,
            })  # fmt: skip
        if not any(e["g"] for e in entries) and all(e["status"] == "ok" for e in entries):
            continue
        first = next((e["g"] for e in entries if e["g"]), None)
        sections.append({
            "model": model, "machine": machine, "rows": entries, "random_init": bool(rows["random_init"].any()),
            "setup": first, "tokenizer": first.tokenizer if first else "",
        })  # fmt: skip
    return {"sections": sections, "disturbed_share": f"{DISTURBED_SHARE:.0%}"} if sections else None


@page("analyses", "Analyses")
def analyses(ctx: Context) -> dict[str, Any] | None:
    """Sections for the analyses found in the results: layer sensitivity, mixed precision, robustness, PTQ vs QAT."""
    from report import analyses as an
    from report import sensitivity as sens

    scans = []
    links = [(record, ctx.loaded.analysis_links.get(path, "")) for record, path in ctx.loaded.analyses]
    for sec in sens.sensitivity(links):
        chart = None
        if sec["rows"]:
            title = f"{sec['name']}: {sec['model']} on {sec['machine']}, sensitivity vs FP32"
            chart = ctx.chart("sensitivity", charts.sensitivity(pd.DataFrame(sec["rows"]), title), sec["machine"],
                              fallback=f"sensitivity-{sec['name']}-{sec['machine']}")  # fmt: skip
        scans.append(sec | {"chart": chart})
    mixed = []
    for m in sens.mixed_precision(ctx.loaded):
        title = f"{m['variant']} on {m['machine']}: search over k"
        chart = (
            ctx.chart("mixed", charts.mixed_search(pd.DataFrame(m["trials"]), m["s"].min_f1_ratio, title), m["machine"])
            if m["trials"]
            else None
        )
        mixed.append(m | {"chart": chart, "raw": ctx.link(m["index"])})

    robust = []
    for sec in an.robustness(ctx.loaded):
        data = pd.DataFrame(sec["rows"])
        title = f"{sec['model']} on {sec['machine']}: macro-F1 under typos"
        robust.append(sec | {
            "chart": ctx.chart("robustness", charts.robustness(data, title), sec["machine"],
                               fallback=f"robustness-{sec['model']}-{sec['machine']}"),
            "rows": [row | {"raw": ctx.link(row["index"])} for row in sec["rows"]],
        })  # fmt: skip
    comparisons = []
    for c in an.ptq_vs_qat(ctx.loaded):
        comparisons.append(c.__dict__ | {"rows": [row | {"raw": ctx.link(row["index"])} for row in c.rows]})
    if not robust and not comparisons and not scans and not mixed:
        return None
    return {"robustness": robust, "ptq_vs_qat": comparisons, "sensitivity": scans, "mixed_precision": mixed}


@page("machines", "Machines")
def machines(ctx: Context) -> dict[str, Any] | None:
    """The same cells side by side on every machine (only when results come from more than one)."""
    if not ctx.multi_machine:
        return None
    ids = list(ctx.loaded.machines())
    cells: dict[str, dict[tuple[str, str, int, str], dict[str, dict[str, Any]]]] = {}
    for r in ctx.records(ctx.table):
        key = (r["variant"], r["runner"], r["batch_size"], r["seq_mode"])
        cells.setdefault(r["model"], {}).setdefault(key, {})[r["machine"]] = r | {"raw": ctx.links(r["members"])}
    models = []
    for model in sorted(cells):
        rows = []
        for key, by_machine in sorted(cells[model].items()):
            per_machine = [by_machine.get(mid) for mid in ids]
            present = [v["p50_ms"] for v in per_machine if v and v["p50_ms"] is not None]
            ratio = max(present) / min(present) if len(present) > 1 else None
            rows.append({"key": key, "per_machine": per_machine, "ratio": ratio})
        models.append({"name": model, "cells": rows})
    return {"ids": ids, "models": models}


@page("provenance", "Provenance")
def provenance(ctx: Context) -> dict[str, Any] | None:
    runs: dict[tuple[str, str], dict[str, Any]] = {}
    for i, r in enumerate(ctx.loaded.results):
        fp = r.fingerprint
        run = runs.setdefault(
            (fp.machine_id, r.run_id),
            {"run_id": r.run_id, "started": r.started, "finished": r.finished, "files": [], "commits": set(),
             "images": set(), "runtimes": set(), "dirty": False},
        )  # fmt: skip
        run["started"] = min(run["started"], r.started)
        run["finished"] = max(run["finished"], r.finished)
        src = ctx.loaded.sources[i]
        run["files"].append({"name": src.path.name, "path": str(src.path), "link": src.link, "status": r.status,
                             "bytes": src.bytes, "samples": src.samples, "sha256": src.sha256})  # fmt: skip
        run["commits"].add(fp.git_commit or "unknown")
        run["dirty"] = run["dirty"] or bool(fp.git_dirty)
        run["images"].add(fp.image or "none recorded")
        run["runtimes"].add(fp.runtime)
    out = []
    for mid, fp in ctx.loaded.machines().items():
        mruns = sorted((v for (m, _), v in runs.items() if m == mid), key=lambda v: v["started"])
        out.append({"id": mid, "name": machine_name(fp), "fp": fp, "runs": mruns})
    return {"hosts": out} if out else None
