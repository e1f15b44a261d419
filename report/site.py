"""Writing site/: the vendored Vega bundle, raw JSON copies, the pages and the static chart fallbacks."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import altair as alt
from jinja2 import Environment, FileSystemLoader, select_autoescape

from quantmatrix.results import frame, write_table
from quantmatrix.summary import summarise
from report.data import Loaded, build_table, load
from report.pages import PAGES, Context, Page

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
RAW_LIMIT = 256 * 1024  # bytes; larger raw files are copied without their latency samples


def vl_version() -> str:
    """The Vega-Lite major.minor altair writes specs for (the bundle must understand them)."""
    return ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])


def vega_bundle() -> str:
    """vega + vega-lite + vega-embed as one classic script, built by vl-convert (seconds) and cached."""
    import vl_convert as vlc

    vl = vl_version()
    cache_root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "quantmatrix"
    cache = cache_root / f"vega-bundle-vl{vl}-vlc{vlc.__version__}.js"
    if cache.is_file():
        return cache.read_text(encoding="utf-8")
    bundle = vlc.javascript_bundle(vl_version=vl)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(bundle, encoding="utf-8")
        tmp.replace(cache)
    except OSError:
        pass  # a read-only home only costs the rebuild next time
    return bundle


def script_json(value: Any) -> str:
    """JSON safe inside <script type="application/json">: no `<`, `>` or `&` can end or open a tag."""
    text = json.dumps(value, default=str, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _fmt(value: Any, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return format(value, spec)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:80] or "x"


def _copy_raw(loaded: Loaded, out: Path, *, full: bool) -> None:
    """Copy each result under raw/<machine>/<run>/ and record the link; big files lose only their samples."""
    used: set[str] = set()
    for result, src in zip(loaded.results, loaded.sources, strict=True):
        rel = f"raw/{_slug(result.fingerprint.machine_id)}/{_slug(result.run_id)}/{_slug(src.path.name)}"
        stem, n = rel.removesuffix(".json"), 1
        while rel in used:
            rel, n = f"{stem}-{n}.json", n + 1
        used.add(rel)
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if full or src.bytes <= RAW_LIMIT:
            shutil.copyfile(src.path, target)
        else:
            data = result.model_dump(mode="json")
            data["site_note"] = (
                f"copy without latency.samples ({src.samples} values) to keep the site small; the original "
                f"{src.path.name} ({src.bytes} bytes, sha256 {src.sha256}) is in the run's uploaded results"
            )
            target.write_text(json.dumps(data, indent=1), encoding="utf-8")
        src.link = rel


def _fallbacks(ctx: Context, out: Path, log: Callable[[str], None]) -> None:
    """Static PNG and SVG copies of the main charts (for READMEs and readers without JavaScript)."""
    import vl_convert as vlc

    vl = vl_version()
    used: set[str] = set()
    for chart in ctx.charts:
        if not chart.fallback:
            continue
        stem, n = _slug(chart.fallback), 1
        while stem in used:
            stem, n = f"{_slug(chart.fallback)}-{n}", n + 1
        used.add(stem)
        (out / "charts").mkdir(exist_ok=True)
        try:
            svg = vlc.vegalite_to_svg(chart.spec, vl_version=vl)
            (out / "charts" / f"{stem}.svg").write_text(svg, encoding="utf-8")
            (out / "charts" / f"{stem}.png").write_bytes(vlc.svg_to_png(svg, scale=1.5))
        except ValueError as e:  # a chart vl-convert cannot draw must not cost the whole site
            log(f"report: no static copy of {chart.fallback}: {e}")
            continue
        chart.fallback = stem


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"], default_for_string=True, default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = _fmt
    env.filters["script_json"] = script_json
    return env


def render(
    dirs: list[Path],
    out: Path,
    *,
    fallbacks: bool = True,
    full_raw: bool = False,
    log: Callable[[str], None] = print,
    tables: dict[str, Path] | None = None,
) -> Path:
    """Render the site for every result under `dirs` into `out` (replaced); returns the index page.

    `tables` maps a format ("csv", "parquet") to a file that receives one row per cell (quantmatrix.results).
    """
    t0 = time.perf_counter()
    loaded = load(dirs)
    for name, reason in loaded.invalid:
        log(f"report: invalid result {name}: {reason}")
    rows = summarise(loaded.results, loaded.samples)
    table = build_table(loaded, rows)
    if out.exists():
        shutil.rmtree(out)
    (out / "static").mkdir(parents=True)
    for asset in STATIC.iterdir():
        shutil.copyfile(asset, out / "static" / asset.name)
    _copy_raw(loaded, out, full=full_raw)
    for record, path in loaded.analyses:  # analysis records are small: always copied whole
        rel = f"raw/{_slug(record.fingerprint.machine_id)}/{_slug(record.run_id)}/analyses/{_slug(path.name)}"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out / rel)
        loaded.analysis_links[path] = rel

    ctx = Context(loaded, table, rows=rows)
    built: list[tuple[Page, dict[str, Any], int]] = []
    if loaded.results:
        for p in PAGES:
            first_chart = len(ctx.charts)
            data = p.build(ctx)
            if data is not None:
                built.append((p, data, first_chart))
    if ctx.charts:
        (out / "static" / "vega-bundle.js").write_text(vega_bundle(), encoding="utf-8")
    if fallbacks:
        _fallbacks(ctx, out, log)

    env = environment()
    nav = [(p.slug, p.title, p.file) for p, _, _ in built] or [("overview", "Overview", "index.html")]
    machines = [(mid, f"{mid}: {fp.cpu_model}" + (f" + {fp.gpu_name}" if fp.gpu_name else ""))
                for mid, fp in loaded.machines().items()]  # fmt: skip
    common = {"nav": nav, "machines": machines, "invalid": loaded.invalid, "total": len(loaded.results)}
    if not built:
        html = env.get_template("empty.html").render(common | {"current": "overview", "charts": [], "dirs": dirs})
        (out / "index.html").write_text(html, encoding="utf-8")
    for i, (p, data, first_chart) in enumerate(built):
        last_chart = built[i + 1][2] if i + 1 < len(built) else len(ctx.charts)
        html = env.get_template(f"{p.slug}.html").render(
            common | data | {"current": p.slug, "title": p.title, "charts": ctx.charts[first_chart:last_chart]}
        )
        (out / p.file).write_text(html, encoding="utf-8")
    # After the site, which replaces `out`: a table may be asked for inside it (site/results.csv).
    for fmt, path in (tables or {}).items():
        write_table(frame(loaded.results, rows), path, fmt)
        log(f"report: {len(rows)} cells -> {path}")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log(
        f"report: {len(loaded.results)} results ({len(loaded.invalid)} invalid), {len(table)} cells, "
        f"{len(built)} pages, {len(ctx.charts)} charts -> {out / 'index.html'} "
        f"({size / 2**20:.1f} MB, {time.perf_counter() - t0:.1f} s)"
    )
    return out / "index.html"
