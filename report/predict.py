"""The confidence chart of one `predict` input: a typed `Prediction` -> predict.html (Vega inlined) + predict.png.

`python -m report.predict predict.json [--out DIR]` re-renders it from the JSON `runners.predict` writes.
Like the rest of the report it never imports torch or onnxruntime.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd

from quantmatrix.errors import QuantmatrixError
from quantmatrix.records import Prediction, atomic_write_text, read_record
from report.site import environment, vega_bundle, vl_version

alt.data_transformers.disable_max_rows()


def chart_data(prediction: Prediction) -> pd.DataFrame:
    """One row per (variant @ runner, label) of each successful row's top-5."""
    rows = []
    for row in prediction.rows:
        if row.status != "ok":
            continue
        series = f"{row.variant} @ {row.runner}"
        for label, p in row.top5:
            rows.append({"series": series, "class": label, "probability": round(float(p), 4),
                         "differs": bool(row.differs_from_reference)})  # fmt: skip
    return pd.DataFrame(rows, columns=["series", "class", "probability", "differs"])


def chart(prediction: Prediction) -> dict[str, Any]:
    """Top-5 probabilities per label, one bar per variant @ runner."""
    title = f"{prediction.model}: {prediction.text[:80]}"
    return (
        alt.Chart(chart_data(prediction))
        .mark_bar()
        .encode(
            x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), title="probability"),
            y=alt.Y("class:N", title=None, sort="-x"),
            yOffset=alt.YOffset("series:N"),
            color=alt.Color("series:N", title="variant @ runner", legend=alt.Legend(labelLimit=360)),
            tooltip=["series", "class", alt.Tooltip("probability:Q", format=".4f"), "differs"],
        )
        .properties(title=title, width=520, height=alt.Step(8))
        .to_dict(validate=False)
    )


def _inline_script(js: str) -> str:
    """JavaScript safe inside an inline <script>: `</script` cannot end the element early."""
    return js.replace("</script", "<\\/script").replace("<!--", "<\\!--")


def render(prediction: Prediction, out: Path, *, png: bool = True) -> list[Path]:
    """Write `out/predict.html` (self-contained: the Vega libraries are inlined) and `out/predict.png`."""
    spec = chart(prediction)
    html = (
        environment().get_template("predict.html").render(p=prediction, spec=spec, bundle=_inline_script(vega_bundle()))
    )
    written = [out / "predict.html"]
    atomic_write_text(written[0], html)
    if png:
        import vl_convert as vlc

        (out / "predict.png").write_bytes(vlc.vegalite_to_png(spec, vl_version=vl_version(), scale=1.5))
        written.append(out / "predict.png")
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m report.predict", description=__doc__)
    ap.add_argument("record", type=Path, help="predict.json written by `python -m runners.predict`")
    ap.add_argument("--out", type=Path, default=None, help="output directory (default: the record's)")
    args = ap.parse_args(argv)
    try:
        prediction = read_record(Prediction, args.record)
    except QuantmatrixError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in render(prediction, args.out or args.record.parent):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
