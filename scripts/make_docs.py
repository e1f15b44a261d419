"""Regenerate the tables in docs/ and the README from the code: `python scripts/make_docs.py [--check]`.

Each generated block sits between `<!-- generated: NAME -->` and `<!-- end generated -->`; the prose
around it is hand-written and kept. Sources: the matrix dataclasses' `Key` annotations
(`quantmatrix/spec.py`), the builder and runner registries, and `matrix.toml`. `--check` exits 1
when a file is out of date (a test runs it).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: import this checkout's packages

from quantmatrix.records import atomic_write_text  # noqa: E402
from quantmatrix.spec import SECTIONS, Matrix, MeasureSpec, load_matrix, section_fields  # noqa: E402

BLOCK = re.compile(r"(<!-- generated: ([a-z-]+) -->\n)(.*?)(<!-- end generated -->)", re.DOTALL)


def toml_value(value: Any) -> str:
    """A default as it would be written in matrix.toml."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if value is None:
        return "none"
    return repr(value)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def key_table(kind: type) -> str:
    """One row per key of a section; a nested table's keys are flattened (`finetune.method`)."""
    rows = ["| key | default | meaning |", "|---|---|---|"]

    def add(k: type, prefix: str) -> None:
        for f in section_fields(k):
            if f.section is not None and f.key.shown is None:
                add(f.section, f"{prefix}{f.toml}.")
                continue
            if f.key.shown is not None:
                default = f.key.shown
            elif f.default is dataclasses.MISSING:
                default = "required"
            else:
                default = f"`{toml_value(f.default)}`"
            rows.append(f"| `{prefix}{f.toml}` | {default} | {cell(f.key.doc)} |")

    add(kind, "")
    return "\n".join(rows)


def first_line(module: str) -> str:
    """The first sentence of a module's docstring, read from its source (nothing is imported)."""
    path = ROOT / Path(*module.split(".")).with_suffix(".py")
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return doc.split("\n\n", 1)[0].replace("\n", " ")


def params_text(kind: type | None) -> str:
    if kind is None or not dataclasses.is_dataclass(kind):
        return "none"
    out = []
    for f in dataclasses.fields(kind):
        if f.default is not dataclasses.MISSING:
            out.append(f"`{f.name} = {toml_value(f.default)}`")
        elif f.default_factory is not dataclasses.MISSING:
            out.append(f"`{f.name} = {toml_value(f.default_factory())}`")
        else:
            out.append(f"`{f.name}` (required)")
    return ", ".join(out) or "none"


def builders_table(builders: Mapping[str, Any]) -> str:
    rows = ["| builder | makes | device | what it does | params (defaults) |", "|---|---|---|---|---|"]
    for name, b in sorted(builders.items()):
        module = f"builders.{name.replace('-', '_')}"
        rows.append(
            f"| `{name}` | {b.output_format} | {b.device} | {cell(first_line(module))} | {params_text(b.params)} |"
        )
    return "\n".join(rows)


def backends_table(backends: Mapping[str, Any]) -> str:
    rows = ["| backend | reads | devices | what it is | params (defaults) |", "|---|---|---|---|---|"]
    for name, r in sorted(backends.items()):
        module = f"runners.backends.{name.replace('-', '_')}"
        formats, devices = ", ".join(r.formats), ", ".join(r.devices)
        rows.append(f"| `{name}` | {formats} | {devices} | {cell(first_line(module))} | {params_text(r.params)} |")
    return "\n".join(rows)


def planned_runners(matrix: Matrix, builders: Mapping[str, Any], backends: Mapping[str, Any]) -> dict[str, list[str]]:
    """Variant -> the runners some profile measures it on, as the planner decides (not restated here)."""
    from bench import plan

    on: dict[str, list[str]] = {}
    for profile in matrix.profiles:
        for device in ("cpu", "cuda"):
            p = plan(
                matrix,
                profile,
                device,
                builder_formats={k: v.output_format for k, v in builders.items()},
                backends=backends,
                run_id="docs",
            )
            for job in p.jobs:
                if job.kind == "run" and job.runner and job.runner not in on.setdefault(job.variant, []):
                    on[job.variant].append(job.runner)
    return on


def variants_table(matrix: Matrix, builders: Mapping[str, Any], backends: Mapping[str, Any]) -> str:
    on = planned_runners(matrix, builders, backends)
    profiles: dict[str, list[str]] = {}
    for p in matrix.profiles.values():
        for listed_variant in p.variants:
            profiles.setdefault(listed_variant, []).append(p.name)
    rows = ["| variant | builder | from | params | measured on | profiles |", "|---|---|---|---|---|---|"]
    rows.append(
        f"| reference | the model's task: `reference` or `lm-reference` | — | — | {', '.join(on.get('reference', []))} "
        f"| every profile |"
    )
    for name, v in matrix.variants.items():
        params = ", ".join(f"`{k} = {toml_value(val)}`" for k, val in v.params.items()) or "defaults"
        runs = ", ".join(on.get(name, [])) or "no profile measures it"
        listed = ", ".join(profiles.get(name, [])) or "—"
        rows.append(f"| `{name}` | `{v.builder}` | {v.source} | {params} | {runs} | {listed} |")
    return "\n".join(rows)


def profiles_table(matrix: Matrix) -> str:
    rows = ["| profile | models | variants | runners | measure overrides | analyses |", "|---|---|---|---|---|---|"]
    for p in matrix.profiles.values():
        overrides = ", ".join(
            f"`{f.name} = {toml_value(getattr(p.measure, f.name))}`"
            for f in section_fields(MeasureSpec)
            if getattr(p.measure, f.name) != getattr(matrix.measure, f.name)
        )
        rows.append(
            f"| `{p.name}` | {', '.join(p.models)} | {len(p.variants)} | {', '.join(p.runners)} "
            f"| {overrides or '—'} | {', '.join(p.analyses) or '—'} |"
        )
    return "\n".join(rows)


def profile_names(matrix: Matrix) -> str:
    return ", ".join(f"`{name}`" for name in matrix.profiles)


def blocks(root: Path) -> dict[str, Callable[[], str]]:
    import builders
    import runners

    b, r = builders.registry(), runners.registry()
    matrix = load_matrix(root / "matrix.toml", builders=b, backends=r)
    tables: dict[str, Callable[[], str]] = {name: functools.partial(key_table, kind) for name, kind in SECTIONS.items()}
    tables["profile-list"] = lambda: profiles_table(matrix)
    tables["profile-names"] = lambda: profile_names(matrix)
    tables["builders"] = lambda: builders_table(b)
    tables["backends"] = lambda: backends_table(r)
    tables["matrix-variants"] = lambda: variants_table(matrix, b, r)
    return tables


FILES = ("docs/matrix.md", "docs/variants.md", "README.md")


def regenerate(text: str, tables: Mapping[str, Callable[[], str]], where: str) -> str:
    def fill(m: re.Match[str]) -> str:
        name = m.group(2)
        if name not in tables:
            raise SystemExit(f"{where}: unknown generated block {name!r}; known: {sorted(tables)}")
        return f"{m.group(1)}{tables[name]()}\n{m.group(4)}"

    return BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="exit 1 if a file is out of date; write nothing")
    ap.add_argument("--root", type=Path, default=ROOT, help="checkout whose docs and matrix.toml to use")
    args = ap.parse_args(argv)
    tables = blocks(args.root)
    texts = {rel: (args.root / rel).read_text(encoding="utf-8") for rel in FILES}
    outdated = {rel: new for rel, text in texts.items() if (new := regenerate(text, tables, rel)) != text}
    if args.check and outdated:
        print(f"out of date: {', '.join(outdated)}; run `python scripts/make_docs.py`", file=sys.stderr)
        return 1
    for rel, new in {} if args.check else outdated.items():
        atomic_write_text(args.root / rel, new)
        print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
