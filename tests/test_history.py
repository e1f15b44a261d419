"""Results as a table (quantmatrix.results, report --csv/--parquet), the History page and its step detector,
and the Overview's answer, on seeded synthetic results; the width check runs in a real headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from synthetic import result, write_run

from quantmatrix.errors import QuantmatrixError
from quantmatrix.history import history
from quantmatrix.results import load
from quantmatrix.summary import load_results, summarise
from report.__main__ import main as report_main

CELLS = [("reference", "torch-eager", 20.0), ("onnx-fp32", "ort-cpu", 15.0), ("ort-int8-dynamic", "ort-cpu", 5.0)]
# Three commits; the third makes the INT8 cell 30% slower and lowers its macro-F1.
COMMITS = [("r1", "a" * 40, "2026-11-01T00:00:00+00:00", 1.0, 0.9),
           ("r2", "b" * 40, "2026-11-02T00:00:00+00:00", 1.0, 0.9),
           ("r3", "c" * 40, "2026-11-03T00:00:00+00:00", 1.3, 0.88)]  # fmt: skip


@pytest.fixture
def runs(tmp_path) -> Path:
    rs = []
    # Written newest first: the history must order by commit date, not by file or run id.
    for k, (run, commit, date, slow, f1) in reversed(list(enumerate(COMMITS))):
        for i, (v, r, ms) in enumerate(CELLS):
            int8 = v == "ort-int8-dynamic"
            rs.append(result(v, r, ms * (slow if int8 else 1.0), run_id=run, seed=10 * k + i, commit=commit,
                             commit_date=date, macro_f1=f1 if int8 else 0.9))  # fmt: skip
    return write_run(tmp_path / "results", rs)


def test_load_gives_one_row_per_cell_and_run_with_cis_and_provenance(runs):
    df = load([runs])
    assert len(df) == 9 and "members" not in df.columns
    int8 = df[(df.variant == "ort-int8-dynamic") & (df.run_id == "r1")].iloc[0]
    assert int8.p50_low < int8.p50_ms < int8.p50_high and int8.speedup_low < int8.speedup < int8.speedup_high
    assert int8.speedup_method == "unpaired, 20 slices each" and int8.speedup_slices == 20
    assert int8.git_commit == "a" * 40 and int8.git_commit_date.startswith("2026-11-01")
    assert int8.cpu_model == "Test CPU" and int8.accuracy == 0.9 and int8.threads == 2
    (runs / "r1" / "junk.json").write_text("{", encoding="utf-8")
    with pytest.raises(QuantmatrixError, match=r"1 invalid result file\(s\): .*junk.json: invalid JSON"):
        load([runs])


def test_step_detector_marks_the_regressing_commit_only(runs):
    results, _ = load_results([runs])
    series = {s.key[2]: s for s in history(results, summarise(results))}
    assert len(series) == 3
    int8 = series["ort-int8-dynamic"]
    assert [p.row.run_id for p in int8.points] == ["r1", "r2", "r3"]
    assert int8.points[1].step is None
    step = int8.points[2].step or ""
    assert step.startswith("slower 3") and "Mann-Whitney U on 20+20 slice medians" in step
    assert "macro-F1 0.9000 -> 0.8800" in step
    assert series["reference"].steps == 0 and series["onnx-fp32"].steps == 0


def test_report_writes_csv_parquet_history_and_the_answer(runs, tmp_path):
    out = tmp_path / "site"
    args = [str(runs), "--out", str(out), "--no-png", "--csv", str(out / "results.csv")]  # inside the site
    args += ["--parquet", str(tmp_path / "t.pq")]
    assert report_main(args) == 0
    csv, pq = pd.read_csv(out / "results.csv"), pd.read_parquet(tmp_path / "t.pq")
    assert len(csv) == len(pq) == 9 and list(csv.columns) == list(pq.columns)
    assert set(pq.variant) == {v for v, _, _ in CELLS} and pq.p50_high.notna().all()
    hist = (out / "history.html").read_text(encoding="utf-8")
    assert hist.count('class="step"') == 1 and "1 of 3 cells have a step" in hist
    assert "cccccccccc" in hist and "2026-11-03" in hist
    index = (out / "index.html").read_text(encoding="utf-8")
    answer = index[index.index("The answer") : index.index("Every variant")]
    assert answer.count("ort-int8-dynamic @ ort-cpu") == 3
    ci = r"<b>\d\.\d\d×</b> \[\d\.\d\d, \d\.\d\d\] <span class=\"ci\">95% CI, unpaired, 20 slices each"
    assert re.search(ci, answer)
    assert "vs onnx-fp32 @ ort-cpu [" in answer  # against FP32 on the same backend, with its CI


def test_one_run_has_no_history_page(tmp_path):
    root = write_run(tmp_path / "results", [result(v, r, ms, seed=i) for i, (v, r, ms) in enumerate(CELLS)])
    assert report_main([str(root), "--out", str(tmp_path / "site"), "--no-png"]) == 0
    assert not (tmp_path / "site" / "history.html").exists()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_overview_table_fits_a_1366_px_screen(tmp_path):
    # Long names, as in the real matrix, in every column that holds one.
    rs = [result(v, r, ms, seed=i, model="minilm-l6-headlines9")
          for i, (v, r, ms) in enumerate([*CELLS, ("ort-int8-static-qdq-per-channel", "ort-cpu", 6.0)])]  # fmt: skip
    rs[-1].status, rs[-1].latency, rs[-1].reason = "failed", None, "x" * 300
    root = write_run(tmp_path / "results", rs)
    assert report_main([str(root), "--out", str(tmp_path / "site"), "--no-png"]) == 0
    page = tmp_path / "site" / "index.html"
    probe = ("<script>addEventListener('load', () => { const t = document.querySelector('table.results');"
             "document.body.setAttribute('data-width', document.documentElement.scrollWidth + ' ' + "
             "t.getBoundingClientRect().right); });</script></body>")  # fmt: skip
    page.write_text(page.read_text(encoding="utf-8").replace("</body>", probe), encoding="utf-8")
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
         "--window-size=1366,900", "--virtual-time-budget=3000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    m = re.search(r'data-width="(\d+) ([\d.]+)"', proc.stdout)
    assert m, proc.stderr[-1500:]
    scroll, right = int(m.group(1)), float(m.group(2))
    assert scroll <= 1366 and right <= 1366, f"page {scroll}px, table right edge {right}px"


def test_containers_are_told_the_checkouts_commit_and_date_at_run_time(tmp_path, monkeypatch):
    """An image is reused across commits that leave its content alone: the commit a result names comes
    from the checkout at `docker run`, not from what the image baked in when it was built."""
    from bench import Job
    from bench.docker import DockerLauncher
    from quantmatrix.hardware import git_commit, git_commit_date

    commit, dirty = git_commit()
    if commit is None:
        pytest.skip("not a git checkout")
    launcher = DockerLauncher(
        image="img", matrix=tmp_path / "matrix.toml", artifacts=tmp_path / "a", results=tmp_path / "r"
    )
    cmd = launcher.command(Job(kind="run", name="r", argv=["-m", "runners"]), "c")
    env = {cmd[i + 1].partition("=")[0]: cmd[i + 1].partition("=")[2] for i, a in enumerate(cmd) if a == "-e"}
    assert env["QUANTMATRIX_GIT_COMMIT"] == commit
    assert env["QUANTMATRIX_GIT_COMMIT_DATE"] == git_commit_date(commit)
    assert env["QUANTMATRIX_GIT_DIRTY"] == str(int(bool(dirty)))
    # Inside the container, those variables are what the fingerprint reads.
    monkeypatch.setenv("QUANTMATRIX_GIT_COMMIT", "f" * 40)
    monkeypatch.setenv("QUANTMATRIX_GIT_DIRTY", "1")
    monkeypatch.setenv("QUANTMATRIX_GIT_COMMIT_DATE", "2026-12-01T00:00:00+00:00")
    assert git_commit() == ("f" * 40, True) and git_commit_date("f" * 40) == "2026-12-01T00:00:00+00:00"
