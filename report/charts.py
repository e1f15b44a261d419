"""Altair chart specs built from the typed table; each returns a Vega-Lite dict, nothing is computed
here but layout (the Pareto frontier is a property of the plotted points, so it lives here too).
"""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd

alt.data_transformers.disable_max_rows()

Spec = dict[str, Any]


def frontier(points: pd.DataFrame) -> pd.Series:
    """True for points that no other point beats on both p50 latency (lower) and macro-F1 (higher)."""
    ordered = points.sort_values(["p50_ms", "macro_f1"], ascending=[True, False])
    best_before = ordered["macro_f1"].cummax().shift(fill_value=float("-inf"))
    return (ordered["macro_f1"] > best_before).reindex(points.index)


def _config_param(configs: list[str]) -> alt.Parameter:
    return alt.param(name="config", value=configs[0], bind=alt.binding_select(options=configs, name="batch / seq: "))


def pareto(rows: pd.DataFrame, title: str) -> Spec:
    """Macro-F1 against p50 latency for every measured cell, one batch/seq setting at a time (a dropdown)."""
    data = rows.copy()
    on = pd.concat([frontier(group) for _, group in data.groupby("config")])
    data["frontier"] = on.reindex(data.index).map({True: "on the Pareto frontier", False: "dominated"})
    data["size_mb"] = data["artifact_mb"].fillna(0.0).round(2)
    fields = ["label", "variant", "runner", "backend", "precision", "device", "config", "p50_ms", "p90_ms", "p99_ms",
              "throughput_per_s", "peak_rss_mb", "macro_f1", "agreement", "size_mb", "speedup", "verdict",
              "frontier"]  # fmt: skip
    data = data[fields].sort_values(["config", "p50_ms"])
    configs = sorted(data["config"].unique())
    param = _config_param(configs)
    base = (
        alt.Chart(data)
        .transform_filter(alt.datum.config == param)
        .encode(
            x=alt.X("p50_ms:Q", scale=alt.Scale(type="log"), title="p50 latency (ms, log scale)"),
            y=alt.Y("macro_f1:Q", scale=alt.Scale(zero=False), title="macro-F1 (test split)"),
        )
    )
    line = base.transform_filter(alt.datum.frontier == "on the Pareto frontier").mark_line(
        strokeDash=[4, 3], color="#888"
    )
    points = base.mark_point(filled=True, opacity=0.85).encode(
        size=alt.Size("size_mb:Q", title="size MB"),
        color=alt.Color(
            "frontier:N",
            title=None,
            scale=alt.Scale(domain=["on the Pareto frontier", "dominated"], range=["#d62728", "#9aa3ad"]),
        ),
        shape=alt.Shape("backend:N"),
        tooltip=[alt.Tooltip(f) for f in fields],
    )
    return (line + points).add_params(param).properties(title=title, width=560, height=320).to_dict(validate=False)


def roofline(rows: pd.DataFrame, title: str) -> Spec:
    """Achieved ops/s per cell against the machine's measured peak (the rule), per batch/seq setting."""
    data = rows.assign(
        achieved_gops=rows["achieved_ops_per_s"] / 1e9,
        peak_gops=rows["peak_ops_per_s"] / 1e9,
        share=rows["achieved_ops_per_s"] / rows["peak_ops_per_s"],
    )[["label", "precision", "config", "achieved_gops", "peak_gops", "share", "p50_ms"]]
    configs = sorted(data["config"].unique())
    param = _config_param(configs)
    base = alt.Chart(data).transform_filter(alt.datum.config == param)
    bars = base.mark_bar().encode(
        x=alt.X("achieved_gops:Q", title="achieved Gop/s (rule: measured peak)"),
        y=alt.Y("label:N", sort="-x", title=None),
        color=alt.Color("precision:N"),
        tooltip=[alt.Tooltip("label:N"), alt.Tooltip("config:N"), alt.Tooltip("achieved_gops:Q", format=".2f"),
                 alt.Tooltip("peak_gops:Q", format=".2f"), alt.Tooltip("share:Q", format=".2%"),
                 alt.Tooltip("p50_ms:Q", format=".3f")],
    )  # fmt: skip
    peak = base.mark_rule(color="#b3261e", strokeDash=[6, 3]).encode(x="max(peak_gops):Q")
    return (bars + peak).add_params(param).properties(title=title, width=560).to_dict(validate=False)


def agreement_matrix(rows: pd.DataFrame, title: str) -> Spec:
    """Top-1 agreement with the FP32 reference: variants (rows) by runner/backend (columns), worst setting."""
    data = (
        rows.groupby(["variant", "runner"], as_index=False)
        .agg(agreement=("agreement", "min"), best=("agreement", "max"), settings=("config", "count"))
        .round(4)
    )
    base = alt.Chart(data).encode(x=alt.X("runner:N", title=None), y=alt.Y("variant:N", title=None))
    cells = base.mark_rect().encode(
        color=alt.Color("agreement:Q", scale=alt.Scale(scheme="redyellowgreen", domain=[0.8, 1.0], clamp=True)),
        tooltip=["variant", "runner", "agreement", "best", "settings"],
    )
    text = base.mark_text(fontSize=11).encode(text=alt.Text("agreement:Q", format=".3f"))
    return (cells + text).properties(title=title, width=alt.Step(90), height=alt.Step(22)).to_dict(validate=False)


def pairwise_agreement(data: pd.DataFrame, title: str) -> Spec:
    """Top-1 agreement between every two variant @ runner pairs (a symmetric heat map), flips in the tooltip."""
    order = sorted(set(data["a"]))
    base = alt.Chart(data).encode(
        x=alt.X("b:N", title=None, sort=order, axis=alt.Axis(labelAngle=-40)), y=alt.Y("a:N", title=None, sort=order)
    )
    cells = base.mark_rect().encode(
        color=alt.Color("agreement:Q", scale=alt.Scale(scheme="redyellowgreen", domain=[0.8, 1.0], clamp=True)),
        tooltip=["a", "b", "agreement", alt.Tooltip("flips:Q", title="label flips")],
    )
    text = base.mark_text(fontSize=10).encode(text=alt.Text("agreement:Q", format=".3f"))
    return (cells + text).properties(title=title, width=alt.Step(48), height=alt.Step(22)).to_dict(validate=False)


def canary(data: pd.DataFrame, title: str) -> Spec:
    """Top-5 probabilities per canary prompt (a dropdown), one bar per variant for each label."""
    prompts = list(dict.fromkeys(data["prompt"]))
    param = alt.param(name="prompt", value=prompts[0], bind=alt.binding_select(options=prompts, name="canary prompt: "))
    return (
        alt.Chart(data)
        .transform_filter(alt.datum.prompt == param)
        .mark_bar()
        .encode(
            x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), title="probability"),
            y=alt.Y("class:N", title=None, sort="-x"),
            yOffset=alt.YOffset("series:N"),
            color=alt.Color("series:N", title="variant @ runner"),
            tooltip=["prompt", "expected", "series", "class", alt.Tooltip("probability:Q", format=".4f")],
        )
        .add_params(param)
        .properties(title=title, width=520, height=alt.Step(7))
        .to_dict(validate=False)
    )


def robustness(data: pd.DataFrame, title: str) -> Spec:
    """Macro-F1 against the share of mistyped words, one line per variant @ runner."""
    return (
        alt.Chart(data[["series", "rate", "macro_f1", "accuracy", "agreement", "flips"]])
        .mark_line(point=True)
        .encode(
            x=alt.X("rate:Q", axis=alt.Axis(format="%"), title="words with a typo"),
            y=alt.Y("macro_f1:Q", scale=alt.Scale(zero=False), title="macro-F1 (test split)"),
            color=alt.Color("series:N", title="variant @ runner"),
            tooltip=[
                "series",
                alt.Tooltip("rate:Q", format=".0%"),
                alt.Tooltip("macro_f1:Q", format=".4f"),
                alt.Tooltip("accuracy:Q", format=".4f"),
                alt.Tooltip("agreement:Q", format=".4f"),
                "flips",
            ],
        )
        .properties(title=title, width=520, height=300)
        .to_dict(validate=False)
    )


def sensitivity(rows: pd.DataFrame, title: str) -> Spec:
    """Per unit (ranked, most sensitive on top): macro-F1 drop, agreement drop and mean KL vs FP32, side by side."""
    order = list(rows.sort_values("rank")["unit"])
    metrics = {"f1_drop": "macro-F1 drop", "agreement_drop": "agreement drop", "mean_kl": "mean KL"}
    long = rows.melt(id_vars=["rank", "unit", "nodes"], value_vars=list(metrics), var_name="metric")
    long["metric"] = long["metric"].map(metrics)
    return (
        alt.Chart(long)
        .mark_bar()
        .encode(
            x=alt.X("value:Q", title=None),
            y=alt.Y("unit:N", sort=order, title=None, axis=alt.Axis(labelLimit=360)),
            color=alt.Color("metric:N", legend=None),
            tooltip=["rank", "unit", "nodes", "metric", alt.Tooltip("value:Q", format=".3g")],
        )
        .properties(width=200, height=alt.Step(14))
        .facet(column=alt.Column("metric:N", title=None, sort=list(metrics.values())))
        .resolve_scale(x="independent")
        .properties(title=title)
        .to_dict(validate=False)
    )


def mixed_search(trials: pd.DataFrame, target: float, title: str) -> Spec:
    """Macro-F1 / FP32 of every candidate k (layers kept FP32) against the target ratio (the rule)."""
    data = trials[["k", "f1_ratio", "agreement", "mean_kl", "quantized_nodes", "outcome"]]
    tooltip = ["k", alt.Tooltip("f1_ratio:Q", format=".4f"), alt.Tooltip("agreement:Q", format=".4f"),
               alt.Tooltip("mean_kl:Q", format=".3g"), "quantized_nodes", "outcome"]  # fmt: skip
    points = (
        alt.Chart(data)
        .mark_line(color="#9aa3ad")
        .encode(
            x=alt.X("k:O", title="most sensitive units kept FP32 (k)"),
            y=alt.Y("f1_ratio:Q", scale=alt.Scale(zero=False), title="macro-F1 / FP32"),
            tooltip=tooltip,
        )
    )
    colored = points.mark_point(size=80, filled=True).encode(
        color=alt.Color("outcome:N", scale=alt.Scale(domain=["pass", "below target"], range=["#2e7d32", "#c62828"]))
    )
    rule = (
        alt.Chart(pd.DataFrame({"target": [target]})).mark_rule(strokeDash=[6, 3], color="#b3261e").encode(y="target:Q")
    )
    return (points + colored + rule).properties(title=title, width=420, height=220).to_dict(validate=False)
