"""Speed-ups with CIs in the summary, and `python -m quantmatrix compare` as a CI gate, on seeded results."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from synthetic import result, write_run

from quantmatrix.__main__ import main
from quantmatrix.compare import Gate, compare_cells
from quantmatrix.metrics import percentile_summary
from quantmatrix.records import Latency, LatencySlice
from quantmatrix.summary import headlines, load_results, render_text, summarise

CELLS = [("reference", "torch-eager", 20.0), ("onnx-fp32", "ort-cpu", 15.0), ("ort-int8-dynamic", "ort-cpu", 5.0)]


def _run(run_id: str, seed: int, slow: dict[str, float] | None = None, f1: dict[str, float] | None = None):
    return [
        result(v, r, ms * (slow or {}).get(v, 1.0), run_id=run_id, seed=seed + i, macro_f1=(f1 or {}).get(v, 0.9))
        for i, (v, r, ms) in enumerate(CELLS)
    ]


def test_headline_speedup_carries_its_ci_and_slices():
    rows = summarise(_run("r", 10))
    [line] = headlines(rows)
    m = re.search(r"= (\d+\.\d\d)x \[(\d+\.\d\d), (\d+\.\d\d)\] \(95% CI, unpaired, 20 slices each\)", line)
    assert m, line
    value, low, high = map(float, m.groups())
    assert low < value < high and 3.5 < value < 4.5  # true ratio 4; coverage: test_stats
    int8 = next(r for r in rows if r.variant == "ort-int8-dynamic")
    assert int8.speedup_slices == 20 and int8.p50_low < int8.p50_ms < int8.p50_high
    assert int8.p50_ci_method == "20 adjacent chunks"
    assert "[" in render_text(rows) and "95% CI: bootstrap" in render_text(rows)


def test_without_raw_samples_there_is_no_ci_and_the_summary_says_so():
    results = _run("r", 10)
    for r in results:
        r.latency.samples = []  # type: ignore[union-attr]
    [line] = headlines(summarise(results))
    assert "(no CI: too few raw samples)" in line


def test_injected_slowdown_is_flagged_with_a_ci_covering_it_and_the_gate_fails(tmp_path, capsys):
    root = write_run(tmp_path / "results", _run("base", 0) + _run("head", 100, slow={"ort-int8-dynamic": 1.15}))
    results, _ = load_results([root])
    changes = {c.key[1]: c for c in compare_cells(results, summarise(results), "base", "head")}
    slow = changes["ort-int8-dynamic"]
    assert slow.change == "slower" and slow.interval is not None and slow.interval.covers(1.15)
    assert slow.test is not None and slow.test.method == "Mann-Whitney U on 20+20 slice medians"
    assert changes["reference"].change == "no significant change"
    assert Gate(slower_pct=10).failures(slow) and not Gate(slower_pct=20).failures(slow)

    summary = tmp_path / "summary.md"
    code = main(["compare", str(root), "--base", "base", "--other", "head", "--fail-if-slower", "10",
                 "--markdown", str(summary)])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 1
    assert "FAIL tiny/ort-int8-dynamic/ort-cpu/1/padded: 1" in err and "% slower (> 10%" in err
    assert "Mann-Whitney U" in out and "1 significantly slower" in out
    assert "within 10%" in out  # the earlier compare's summary line is kept
    md = summary.read_text(encoding="utf-8")
    assert md.startswith("### head vs base") and "| tiny/ort-int8-dynamic/ort-cpu/1/padded |" in md
    assert "**gate failed**" in md
    assert main(["compare", str(root), "--base", "base", "--other", "head", "--fail-if-slower", "25"]) == 0


def test_quality_change_is_exact_always_reported_and_gated(tmp_path, capsys):
    root = write_run(tmp_path / "results", _run("base", 0) + _run("head", 0, f1={"ort-int8-dynamic": 0.88}))
    assert main(["compare", str(root), "--base", "base", "--other", "head"]) == 0
    out = capsys.readouterr().out
    int8 = next(line for line in out.splitlines() if line.startswith("tiny/ort-int8-dynamic"))
    assert "-0.0200" in int8 and "no significant change" in int8  # same samples: no timing change
    assert main(["compare", str(root), "--base", "base", "--other", "head", "--fail-if-quality-drop", "1"]) == 1
    assert "macro-F1 0.9000 -> 0.8800 (-2.22%)" in capsys.readouterr().err
    assert main(["compare", str(root), "--base", "base", "--other", "head", "--fail-if-quality-drop", "3"]) == 0


def test_a_cell_that_stopped_measuring_fails_the_gate(tmp_path, capsys):
    head = _run("head", 0)
    head[2].status, head[2].latency, head[2].reason = "failed", None, "runner exploded"
    root = write_run(tmp_path / "results", _run("base", 0) + head)
    assert main(["compare", str(root), "--base", "base", "--other", "head", "--fail-if-slower", "5"]) == 1
    assert "failed in the other: runner exploded" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--fail-if-slower", "--fail-if-quality-drop"])
def test_gate_thresholds_are_checked(tmp_path, capsys, flag):
    root = write_run(tmp_path / "results", _run("base", 0) + _run("head", 1))
    assert main(["compare", str(root), "--base", "base", "--other", "head", flag, "150"]) == 2
    assert f"{flag} takes a percentage in [0, 100), got 150" in capsys.readouterr().err


def test_pr_workflow_gates_on_compare_and_the_benchmark_keeps_history(repo):
    yaml = pytest.importorskip("yaml")
    pr = yaml.safe_load((repo / ".github/workflows/pr-benchmark.yml").read_text())
    steps = json.dumps(pr["jobs"]["compare"]["steps"])
    assert steps.count("nox -s benchmark-cpu") == 2 and "--run-id base" in steps and "--run-id head" in steps
    assert "python -m quantmatrix compare" in steps and "--fail-if-slower" in steps
    assert "--fail-if-quality-drop" in steps and '--markdown \\"$GITHUB_STEP_SUMMARY\\"' in steps
    bench = json.dumps(yaml.safe_load((repo / ".github/workflows/benchmark.yml").read_text())["jobs"]["report"])
    assert "history/results.tar.gz" in bench and "nox -s report -- history" in bench


def test_interleaved_slices_are_paired_by_round_in_the_summary_and_in_compare(tmp_path):
    # Two runs whose cells took turns in 20 rounds: each round's host speed hit both alike.
    rng = np.random.default_rng(8)
    phase = np.repeat(rng.lognormal(0.0, 0.3, 5), 4)
    results = []
    for run, factor in (("base", 1.0), ("head", 1.08)):
        r = result("ort-int8-dynamic", "ort-cpu", 5.0, run_id=run)
        samples = [float(x) for f in phase for x in 5.0 * factor * f * rng.lognormal(0, 0.02, 10)]
        turns = [LatencySlice(first=10 * i, count=10, started=1e9 + i, round=i) for i in range(20)]
        r.latency = Latency(samples=samples, iterations=200, warmup=5, slices=turns, **percentile_summary(samples))
        results.append(r)
    root = write_run(tmp_path / "results", results)
    loaded, _ = load_results([root])
    [change] = compare_cells(loaded, summarise(loaded), "base", "head")
    assert change.interval is not None and change.interval.method == "paired, 20 rounds"
    assert change.test is not None and change.test.method == "Wilcoxon signed-rank on 20 paired rounds"
    assert change.change == "slower" and change.interval.covers(1.08)
    assert summarise(loaded)[0].p50_ci_method == "20 interleaved slices"
