"""`python -m runners.predict`: every built tiny artefact on one headline, the table, the chart, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantmatrix.records import Prediction, read_record
from runners.predict import main

pytestmark = pytest.mark.slow

HEADLINE = "Central bank raises interest rates as inflation climbs"


def _main(built: Path, out: Path, *args: str) -> int:
    return main(["--matrix", str(built / "matrix.toml"), "--artifacts", str(built / "artifacts"),
                 "--model", "tiny", "--out", str(out), *args])  # fmt: skip


def test_predict_runs_every_built_artefact_and_writes_the_chart(built, tmp_path, capsys):
    out = tmp_path / "p"
    assert _main(built, out, "--", HEADLINE) == 0
    printed = capsys.readouterr().out
    p = read_record(Prediction, out / "predict.json")
    got = {(r.variant, r.runner) for r in p.rows}
    # Built in conftest: the reference, its ONNX export, ORT dynamic INT8 and both torch INT8 variants;
    # one runner per backend each, never the null runner.
    assert got == {
        ("reference", "torch-eager"),
        ("onnx-fp32", "ort-cpu"),
        ("ort-int8-dynamic", "ort-cpu"),
        ("torch-int8-dynamic", "torch-eager"),
        ("torch-int8-dynamic-torchao", "torch-eager"),
    }
    for r in p.rows:
        assert r.status == "ok", r.reason
        assert len(r.top5) == 5 and r.latency_ms > 0 and r.load_ms > 0
        probs = [prob for _, prob in r.top5]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert r.differs_from_reference == (r.top5[0][0] != p.reference_top)
        assert r.variant in printed
    rows = {r.variant: r for r in p.rows}
    assert p.reference_top == rows["reference"].top5[0][0] and not rows["reference"].differs_from_reference
    # The FP32 ONNX export reproduces the FP32 reference's probabilities.
    ref, onnx = dict(rows["reference"].top5), dict(rows["onnx-fp32"].top5)
    assert [label for label, _ in rows["onnx-fp32"].top5] == list(ref)
    assert all(abs(ref[k] - onnx[k]) < 1e-3 for k in ref)
    header = printed.splitlines()[1]
    assert header.split() == ["variant", "runner", "backend", "precision", "top-5", "(probability)", "ms", "vs", "FP32"]
    html = (out / "predict.html").read_text()
    assert "vegaEmbed" in html and 'src="http' not in html and "cdn" not in html.lower()
    spec = json.loads(html.split('id="chart-spec">', 1)[1].split("</script>", 1)[0])
    assert {row["series"] for row in spec["datasets"][next(iter(spec["datasets"]))]} == {f"{v} @ {r}" for v, r in got}
    assert (out / "predict.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        ("   ", (), "empty input"),
        ("\U0001f600\U0001f600", (), "unknown input"),
        (HEADLINE, ("--model", "nope"), "unknown model 'nope'"),
        (HEADLINE, ("--runner", "nope"), "unknown runner 'nope'"),
    ],
)
def test_predict_bad_input_gives_one_clear_message(built, tmp_path, capsys, text, args, message):
    assert _main(built, tmp_path / "p", *args, "--", text) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "p" / "predict.json").exists()


def test_predict_without_artefacts_says_how_to_build_them(built, tmp_path, capsys):
    code = main([HEADLINE, "--matrix", str(built / "matrix.toml"), "--artifacts", str(tmp_path / "none"),
                 "--model", "tiny", "--out", str(tmp_path / "p")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "no artefacts built for 'tiny'" in err and "python -m builders build" in err
