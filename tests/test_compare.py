"""Speed-ups with CIs in the summary, and `python -m quantmatrix compare` as a CI gate, on seeded results."""

from __future__ import annotations

import json
import re

import pytest
from synthetic import result, write_run

from quantmatrix.__main__ import main
from quantmatrix.compare import Gate, compare_cells
from quantmatrix.records import LatencySlice
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
    # Fallback for a base without --export-plan: base and head take turns round by round (base r1, head r1,
    # base r2, ...), each resuming its run id.
    assert "for side in base head" in steps and '--run-id \\"$side\\"' in steps and '--repeats \\"$round\\"' in steps
    # Side by side first: the base exports its plan, the head runs both (paired by round).
    assert (
        "--export-plan" in steps and "--side-by-side" in steps and "PROFILE" in steps and pr["env"]["PROFILE"] == "pr"
    )
    assert "python -m quantmatrix compare" in steps and "--relative" in steps and "--fail-if-slower" in steps
    assert "--fail-if-quality-drop" in steps and '--markdown \\"$GITHUB_STEP_SUMMARY\\"' in steps
    bench = json.dumps(yaml.safe_load((repo / ".github/workflows/benchmark.yml").read_text())["jobs"]["report"])
    assert "history/results.tar.gz" in bench and "nox -s report -- history" in bench


def _sliced(r, rounds: int = 20):
    """`r` with its samples recorded as `rounds` interleaved slices (rounds 0..rounds-1), as turns write them."""
    n = len(r.latency.samples) // rounds
    slices = [LatencySlice(first=i * n, count=n, started=1.0 + i, round=i) for i in range(rounds)]
    return r.model_copy(update={"latency": r.latency.model_copy(update={"slices": slices})})


def _slowed_cell(root, prepare):
    """Runs `base` and `head` (ort-int8-dynamic 1.15x slower in head), each result passed through `prepare`,
    written under `root` and compared: the runs and the slowed cell's change."""
    runs = [prepare(r) for r in _run("base", 0) + _run("head", 100, slow={"ort-int8-dynamic": 1.15})]
    results, _ = load_results([write_run(root, runs)])
    changes = {c.key[1]: c for c in compare_cells(results, summarise(results), "base", "head")}
    return runs, changes["ort-int8-dynamic"]


def test_rounds_pair_within_one_run_and_repeat_never_across_runs(tmp_path):
    """Round k of two runs were not timed side by side, nor round k of two repeats of one run: only slices
    of one run's interleaving group pair, so compare is unpaired and a run's speed-ups pair per repeat."""
    runs, slow = _slowed_cell(tmp_path / "results", _sliced)
    assert slow.test is not None and slow.test.method == "Mann-Whitney U on 20+20 slice medians"
    assert slow.interval is not None and slow.interval.method == "unpaired, 20 slices each"
    # Within a run, the slices of two cells with the same round pair; two repeats give 2x the rounds.
    second = [r.model_copy(update={"cell": r.cell.model_copy(update={"repeat": 1})}) for r in runs[:3]]
    rows = summarise(runs[:3] + second)
    int8 = next(r for r in rows if r.variant == "ort-int8-dynamic")
    assert int8.speedup_method == "paired, 40 rounds"


@pytest.mark.parametrize("interleaved", [True, False])
def test_an_interval_is_about_the_number_printed_beside_it_across_repeats(interleaved):
    """A cell of three repeats shows the median of the repeats' p50s; when the host ran 1.8x slower in one
    repeat, pooling every sample would centre the CI elsewhere. The bootstraps resample each repeat on its
    own and take the same median of medians, so the speed-up and the p50 lie inside their CIs."""
    runs = []
    for repeat, factor in enumerate([1.0, 1.8, 1.1]):
        for r in _run("r", 10 * repeat + 1, slow={v: factor for v, _, _ in CELLS}):
            r = _sliced(r) if interleaved else r
            runs.append(r.model_copy(update={"cell": r.cell.model_copy(update={"repeat": repeat})}))
    rows = summarise(runs)
    int8 = next(r for r in rows if r.variant == "ort-int8-dynamic")
    assert int8.speedup_low <= int8.speedup <= int8.speedup_high, int8
    assert int8.p50_low <= int8.p50_ms <= int8.p50_high, int8
    assert 3.5 < int8.speedup < 4.5 and int8.speedup_method == ("paired, 60 rounds" if interleaved else
                                                                "unpaired, 60 slices each")  # fmt: skip


def test_relative_compare_cancels_a_host_that_ran_slower_and_still_catches_a_real_slowdown(tmp_path, capsys):
    """Run B ran on a host 1.6x slower for every cell, and its INT8 cell 15% slower on top: compared on p50s,
    every cell changed; compared relative to each run's FP32 eager baseline, only the INT8 cell did."""
    slow = {"reference": 1.6, "onnx-fp32": 1.6, "ort-int8-dynamic": 1.6 * 1.15}
    root = write_run(tmp_path / "results", [_sliced(r) for r in _run("base", 0) + _run("head", 100, slow=slow)])
    results, _ = load_results([root])
    rows = summarise(results)
    absolute = {c.key[1]: c for c in compare_cells(results, rows, "base", "head")}
    assert {v: c.change for v, c in absolute.items()} == dict.fromkeys(absolute, "slower")
    relative = {c.key[1]: c for c in compare_cells(results, rows, "base", "head", relative=True)}
    assert relative["reference"].note == "the baseline of the relative comparison"
    assert relative["onnx-fp32"].change == "no significant change"
    int8 = relative["ort-int8-dynamic"]
    assert int8.change == "slower" and int8.interval.covers(1.15) and not int8.interval.covers(1.0)
    assert int8.test.method.startswith("bootstrap of the in-run ratios")
    code = main(["compare", str(root), "--base", "base", "--other", "head", "--relative", "--fail-if-slower", "10"])
    out, err = capsys.readouterr()
    assert code == 1 and "relative to the baseline" in out and "FAIL tiny/ort-int8-dynamic" in err
    assert "onnx-fp32" not in err


def test_two_runs_that_shared_turn_groups_are_compared_paired_by_round(tmp_path):
    """Cells of two runs whose slices carry the same turn group (`bench --side-by-side`) pair by round; the
    change takes the test's direction, and the ratio is the median over groups of each group's ratio."""

    def grouped(r, group: str):
        r = _sliced(r)
        return r.model_copy(update={"latency": r.latency.model_copy(update={"turn_group": group})})

    _, slow = _slowed_cell(tmp_path / "results", lambda r: grouped(r, "g0"))
    assert slow.test is not None and slow.test.method == "Wilcoxon signed-rank on 20 paired rounds"
    assert slow.interval is not None and slow.interval.method == "paired, 20 rounds"
    assert slow.change == "slower" and slow.test.direction == 1 and slow.ratio == slow.interval.value
    assert slow.interval.covers(1.15)
    # Without the shared group, the same results pair only within each run: compare is unpaired.
    _, unpaired = _slowed_cell(tmp_path / "plain", _sliced)
    assert unpaired.test is not None and unpaired.test.method.startswith("Mann-Whitney")
