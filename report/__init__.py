"""The static comparison site: result JSONs (from any number of machines) -> one typed table -> site/.

Data first (`report.data`: loading, validation and a pandas table of grouped cells, no HTML), then
presentation (`report.pages` and `report.site`: jinja2 templates with autoescape, altair charts with
the Vega libraries vendored, so the site works offline from file:// and on GitHub Pages).
Never imports torch, onnxruntime or tensorrt.
"""

from __future__ import annotations

from report.data import Loaded, build_table, load
from report.site import render

__all__ = ["Loaded", "build_table", "load", "render"]
