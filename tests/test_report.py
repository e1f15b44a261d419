"""The static report on real results from the tiny pipeline: pages, escaping, empty and invalid input,
several machines merged, no heavy imports, and (marked `browser`) a real headless Chromium.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from report.charts import frontier
from report.site import render

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)"
)
PAGES = ("index", "pareto", "drift", "quality", "roofline", "provenance")
RUNS = [("reference", "torch-eager"), ("reference", "null"), ("onnx-fp32", "ort-cpu"), ("ort-int8-dynamic", "ort-cpu")]


@pytest.fixture(scope="module")
def results(built, tmp_path_factory) -> Path:
    """Real result JSONs of the tiny model (4 runs × 4 batch/seq settings), plus one skipped cell."""
    import builders
    import runners
    from quantmatrix.spec import load_matrix
    from runners.job import RunJob

    work = tmp_path_factory.mktemp("report")
    shutil.copytree(built, work / "w")
    matrix = load_matrix(work / "w" / "matrix.toml", builders=builders.registry(), backends=runners.registry())
    # The roof, measured for real but kept whatever else the machine runs (a job keeps it only when the
    # machine was quiet, which a busy CI host may never be): the roofline page needs one.
    from quantmatrix.hardware import fingerprint
    from runners.peak import fp32_peak, int8_peak

    roof = work / "w" / "artifacts" / ".machine" / f"peak-v2-{fingerprint().machine_id}.json"
    roof.parent.mkdir(parents=True, exist_ok=True)
    roof.write_text(json.dumps({"fp32": fp32_peak(), "int8": int8_peak()}))
    for variant, runner in RUNS:
        RunJob(
            matrix, "t", "tiny", variant, runner,
            artifacts=work / "w" / "artifacts", results=work / "results", run_id="r", log=lambda _: None,
        ).run()  # fmt: skip
    # What a CUDA cell looks like on a machine without a GPU.
    data = _load(next((work / "results" / "r").glob("tiny__ort-int8-dynamic__ort-cpu__b1__padded*.json")))
    data["cell"] |= {"variant": "trt-fp16", "runner": "trt", "backend": "tensorrt", "device": "cuda"}
    data |= {"status": "skipped", "reason": "needs CUDA", "verdict": "skipped", "latency": None, "quality": None,
             "agreement": None, "canary": [], "throughput_per_s": None, "achieved_ops_per_s": None}  # fmt: skip
    _dump(data, work / "results" / "r" / "tiny__trt-fp16__trt__b1__padded.json")
    return work / "results"


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _dump(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def _render(dirs: list[Path], out: Path, **kw) -> tuple[Path, list[str]]:
    lines: list[str] = []
    return render(dirs, out, log=lines.append, **kw), lines


def _second_machine(results: Path, dest: Path) -> Path:
    """The same results as if measured on another machine."""
    for path in results.rglob("*.json"):
        data = _load(path)
        data["fingerprint"] |= {"machine_id": "b0b0b0b0b0b0", "cpu_model": "Other CPU @ 3.0GHz"}
        data["run_id"] = "other"
        _dump(data, dest / "other" / path.name)
    return dest


def test_site_from_real_results(results, tmp_path):
    index, log = _render([results], tmp_path / "site")
    site = index.parent
    for page in PAGES:
        assert (site / f"{page}.html").is_file(), page
    assert not (site / "machines.html").exists(), "one machine: no comparison page"
    html = index.read_text(encoding="utf-8")
    for variant, runner in RUNS:
        assert f"<td>{variant}</td><td>{runner}</td>" in html
    assert "skipped: needs CUDA" in html
    assert "1.00×" in html, "the eager FP32 reference is its own baseline"
    assert "% overhead" in html, "the null runner's overhead is shown"
    # Every raw link resolves to a copy inside the site; no page loads anything from the network.
    for page in site.glob("*.html"):
        text = page.read_text(encoding="utf-8")
        for link in re.findall(r'href="(raw/[^"]+)"', text):
            assert (site / link).is_file(), link
        assert not re.search(r'(src|href)="(https?:)?//', text), f"{page.name} loads from the network"
    assert len(list((site / "raw").rglob("*.json"))) == 4 * len(RUNS) + 1
    assert sorted(p.suffix for p in (site / "charts").iterdir()) == [".png", ".svg"]
    assert (site / "static" / "vega-bundle.js").stat().st_size > 100_000
    assert "vegaEmbed" in (site / "static" / "vega-bundle.js").read_text(encoding="utf-8")
    drift = (site / "drift.html").read_text(encoding="utf-8")
    assert "canary prompts" in drift and "Worst examples" in drift
    assert "confusion" in (site / "quality.html").read_text(encoding="utf-8")
    assert any("17 results (0 invalid)" in line for line in log), log


def test_backends_are_compared_with_each_other_not_only_with_fp32(results, tmp_path):
    """The drift page's backend-vs-backend matrix is computed from each result's own predictions."""
    from report.data import build_table, load
    from report.pages import Context, _pairwise

    loaded = load([results])
    series = {}
    for i, r in enumerate(loaded.results):
        if r.status == "ok" and r.agreement is not None:
            series.setdefault(f"{r.cell.variant} @ {r.cell.runner}", (i,))
    assert len(series) == 3, series  # the reference on torch-eager, onnx-fp32 and ort-int8-dynamic on ort-cpu
    pairs = _pairwise(Context(loaded, build_table(loaded)), series).set_index(["a", "b"])
    assert len(pairs) == 9
    by = {f"{r.cell.variant} @ {r.cell.runner}": r for r in loaded.results if r.agreement is not None}
    a, b = by["onnx-fp32 @ ort-cpu"].agreement, by["ort-int8-dynamic @ ort-cpu"].agreement
    flips = sum(x != y for x, y in zip(a.predictions, b.predictions, strict=True))
    got = pairs.loc[("onnx-fp32 @ ort-cpu", "ort-int8-dynamic @ ort-cpu")]
    assert got["flips"] == flips and got["agreement"] == round(1 - flips / len(a.predictions), 4)
    # Against the reference the pairwise value is the recorded agreement with FP32.
    assert pairs.loc[("reference @ torch-eager", "ort-int8-dynamic @ ort-cpu")]["agreement"] == round(b.top1, 4)
    assert (pairs.xs("onnx-fp32 @ ort-cpu", level="a").loc["onnx-fp32 @ ort-cpu"]["flips"]) == 0
    drift = (_render([results], tmp_path / "site")[0].parent / "drift.html").read_text(encoding="utf-8")
    assert "Backend against backend" in drift and 'data-kind="pairwise"' in drift
    worst = b.worst[0]
    assert len(worst.variant_top5) == 5 and worst.variant_top5[0][0] == worst.variant_top


def test_names_render_as_text_not_markup(results, tmp_path):
    src = next(results.rglob("tiny__ort-int8-dynamic__ort-cpu__b1__padded*.json"))
    data = _load(src)
    data["cell"] |= {"model": "<script>alert(1)</script>", "variant": '<img src=x onerror="alert(2)">'}
    data["run_id"] = "</script><script>alert(3)</script>"
    _dump(data, tmp_path / "evil" / "evil.json")
    index, _ = _render([results, tmp_path / "evil"], tmp_path / "site")
    for page in index.parent.glob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert "<script>alert" not in text and "<img src=x" not in text, page.name
    html = index.read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=&#34;alert(2)&#34;&gt;" in html
    assert all(".." not in str(p.relative_to(index.parent)) for p in index.parent.rglob("*"))


def test_empty_results_dir_gives_a_helpful_page(tmp_path):
    (tmp_path / "results").mkdir()
    index, log = _render([tmp_path / "results"], tmp_path / "site")
    html = index.read_text(encoding="utf-8")
    assert "No results yet" in html and "nox -s benchmark-cpu" in html
    assert sorted(p.name for p in index.parent.glob("*.html")) == ["index.html"]
    assert any("0 results" in line for line in log)


def test_missing_dir_is_listed_not_fatal(tmp_path):
    index, log = _render([tmp_path / "nowhere"], tmp_path / "site")
    assert "no such file or directory" in index.read_text(encoding="utf-8")
    assert any("nowhere" in line for line in log)


def test_invalid_files_are_listed_and_the_rest_renders(results, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(results, bad)
    (bad / "r" / "broken.json").write_text('{"schema_version": 1, ')
    (bad / "r" / "future.json").write_text(json.dumps({"schema_version": 99}))
    data = _load(next(bad.rglob("tiny__onnx-fp32__ort-cpu__b1__padded*.json")))
    del data["fingerprint"]
    _dump(data, bad / "r" / "nofingerprint.json")
    index, log = _render([bad], tmp_path / "site")
    html = index.read_text(encoding="utf-8")
    assert "Invalid result files (3)" in html
    assert "invalid JSON at line 1" in html and "schema_version 99" in html and "fingerprint" in html
    assert sum("invalid result" in line for line in log) == 3
    assert "<td>ort-int8-dynamic</td>" in html


def test_results_written_by_schema_version_1_render_beside_new_ones(results, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(results, mixed)
    # A real version-1 result (torch-int8-dynamic on torch-eager, written before the typed result fields).
    shutil.copy(Path(__file__).parent / "fixtures" / "v1" / "result-v1-classifier.json", mixed / "r" / "old.json")
    index, log = _render([mixed], tmp_path / "site")
    assert "Invalid result files" not in index.read_text(encoding="utf-8"), log
    quality = (index.parent / "quality.html").read_text(encoding="utf-8")
    old = [line for line in quality.splitlines() if "torch-int8-dynamic @ torch-eager" in line]
    assert old and "(natural length, batch 32)" in old[0]  # the migrated quality_eval, shown as before


def test_two_machines_merge_into_one_comparison(results, tmp_path):
    other = _second_machine(results, tmp_path / "other")
    index, _ = _render([results, other], tmp_path / "site", fallbacks=False)
    site = index.parent
    html = index.read_text(encoding="utf-8")
    assert 'id="machine-filter"' in html and "Other CPU @ 3.0GHz" in html
    assert html.count('data-machine="b0b0b0b0b0b0"') == 4 * len(RUNS) + 1
    compare = (site / "machines.html").read_text(encoding="utf-8")
    assert "p50 ms on b0b0b0b0b0b0" in compare
    pareto = (site / "pareto.html").read_text(encoding="utf-8")
    assert pareto.count('class="chart"') == 2, "one Pareto chart per model and machine"
    assert (site / "provenance.html").read_text(encoding="utf-8").count('class="machine"') == 2


def test_frontier_keeps_only_undominated_points():
    points = pd.DataFrame({"p50_ms": [1.0, 2.0, 3.0, 2.5], "macro_f1": [0.80, 0.90, 0.95, 0.85]})
    assert frontier(points).tolist() == [True, True, True, False]


def test_report_never_imports_torch_or_runtimes(results, tmp_path, repo):
    code = (
        "import sys; from pathlib import Path; import report; "
        f"report.render([Path({str(results)!r})], Path({str(tmp_path / 'site')!r}), log=lambda _: None); "
        "bad = [m for m in ('torch', 'onnxruntime', 'tensorrt', 'transformers') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_workflows_run_the_sessions_and_publish_pages(repo):
    yaml = pytest.importorskip("yaml")
    ci = yaml.safe_load((repo / ".github/workflows/ci.yml").read_text())
    assert "nox -s tests lint" in json.dumps(ci)
    bench = yaml.safe_load((repo / ".github/workflows/benchmark.yml").read_text())
    jobs = bench["jobs"]
    assert "nox -s benchmark-cpu" in json.dumps(jobs["cpu"]) and "self-hosted" in jobs["gpu"]["runs-on"]
    assert "nox -s benchmark-gpu" in json.dumps(jobs["gpu"])
    assert set(jobs["report"]["needs"]) == {"cpu", "gpu"} and "nox -s report" in json.dumps(jobs["report"])
    uses = [s.get("uses", "") for j in jobs.values() for s in j["steps"]]
    assert any(u.startswith("actions/upload-pages-artifact") for u in uses)
    assert any(u.startswith("actions/deploy-pages") for u in uses)


class _Charts(HTMLParser):
    """Chart divs in a dumped DOM, each with whether an <svg> or <canvas> was drawn inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, bool] = {}
        self._open: list[str | None] = []  # for each open <div>: the chart id it belongs to, if it is one

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div":
            is_chart = "chart" in (a.get("class") or "").split() and (a.get("id") or "").startswith("chart-")
            self._open.append(a["id"] if is_chart else None)
            if is_chart:
                self.charts[a["id"]] = False
        elif tag in ("svg", "canvas"):
            for chart in self._open:
                if chart:
                    self.charts[chart] = True

    def handle_endtag(self, tag):
        if tag == "div" and self._open:
            self._open.pop()


def _chromium(*args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
             "--disable-extensions", "--virtual-time-budget=5000"]  # fmt: skip
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.browser
@needs_chromium
def test_site_works_in_headless_chromium(results, tmp_path):
    other = _second_machine(results, tmp_path / "other")
    index, _ = _render([results, other], tmp_path / "site")
    site = index.parent
    checked = 0
    for page in (*PAGES, "machines"):
        url = (site / f"{page}.html").resolve().as_uri() + "?selftest"
        proc = _chromium("--enable-logging=stderr", "--v=0", "--dump-dom", url)
        assert proc.returncode == 0, proc.stderr[-2000:]
        console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
        assert not console, f"{page}: console output {console}"
        dom = proc.stdout
        errors = re.findall(r'data-errors="[^"]*"', dom)
        assert errors == ['data-errors="[]"'], f"{page}: {errors}"
        parser = _Charts()
        parser.feed(dom)
        assert all(parser.charts.values()), f"{page}: charts not drawn: {parser.charts}"
        assert dom.count('<div class="chart') == len(parser.charts)
        checked += len(parser.charts)
        if page == "index":
            assert 'data-sort-test="ok"' in dom, re.findall(r'data-sort-test="[^"]*"', dom)
    assert checked >= 8  # Pareto, agreement, canary and roofline for each of two machines
    for page in ("index", "pareto"):
        shot = site / f"screenshot-{page}.png"
        _chromium(
            "--hide-scrollbars", "--window-size=1400,1800", f"--screenshot={shot}", (site / f"{page}.html").as_uri()
        )
        assert shot.stat().st_size > 10_000
    print(f"screenshots for review: {site}/screenshot-*.png")
