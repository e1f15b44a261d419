"""`python -m quantmatrix`: small core utilities.

python -m quantmatrix schemas [--check]     write (or check) schemas/*.schema.json
python -m quantmatrix check [matrix.toml]   validate the matrix and print its profiles
python -m quantmatrix fingerprint           print this machine's fingerprint as JSON
python -m quantmatrix noise [--seconds 30]  probe memory bandwidth and CPU speed once a second: is this
                                            machine steady enough for round-to-round p50s to agree?
python -m quantmatrix compare RESULTS --base RUN --other RUN [--fail-if-slower PCT]
                          [--fail-if-quality-drop PCT] [--markdown FILE]
                                            cell by cell, run OTHER's p50 against run BASE's
                                            (e.g. containers against venvs, or two machines), with
                                            a significance test and the ratio's 95% CI; exits 1
                                            when a gate fails (docs/statistics.md)
python -m quantmatrix doctor [--json] [--require-gpu] [--expect-installed A,B]
                                            which GPU libraries load here and what is missing (exit 1
                                            when something installed does not load)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quantmatrix.errors import QuantmatrixError, run_command

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


def schemas(check: bool) -> int:
    from quantmatrix.records import atomic_write_text, json_schemas, render_schema

    stale = []
    for name, schema in json_schemas().items():
        path = SCHEMA_DIR / name
        text = render_schema(schema)
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
        else:
            atomic_write_text(path, text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run `python -m quantmatrix schemas`", file=sys.stderr)
        return 1
    return 0


def check(path: Path) -> int:
    from quantmatrix.spec import load_matrix

    try:
        import builders
        import runners
        import runners.analyses

        known_b: Mapping[str, Any] | None = builders.registry()
        known_r: Mapping[str, Any] | None = runners.registry()
        known_a: Mapping[str, Any] | None = runners.analyses.registry()
    except ImportError:  # core installed alone: structure is still checked
        known_b = known_r = known_a = None
    matrix = load_matrix(path, builders=known_b, backends=known_r, analyses=known_a)
    for p in matrix.profiles.values():
        analyses = f" analyses={list(p.analyses)}" if p.analyses else ""
        print(f"{p.name}: models={list(p.models)} variants={len(p.variants)} runners={list(p.runners)}{analyses}")
    return 0


def noise(seconds: int) -> int:
    from quantmatrix.hardware import machine_noise
    from quantmatrix.summary import SPREAD_LIMIT

    if seconds < 2:
        raise QuantmatrixError(f"--seconds must be at least 2 (got {seconds}): a spread needs two samples")
    print(f"probing this machine for {seconds} s (memory copy of 64 MiB, single-thread speed probe per CPU)")
    moved = machine_noise(seconds)
    worst = max(moved.values())
    verdict = (
        "steady" if worst < SPREAD_LIMIT else f"not steady: expect one cell's rounds to differ by up to ~{worst:.2f}x"
    )
    print(
        f"memory bandwidth moved {moved['bandwidth_spread']:.2f}x, the speed probe {moved['probe_spread']:.2f}x: "
        f"{verdict} (the summary flags rounds {SPREAD_LIMIT:.2f}x apart)"
    )
    return 0


def compare(
    paths: list[Path],
    base: str,
    other: str,
    tolerance: float,
    gate_args: tuple[float | None, float | None] = (None, None),
    markdown: Path | None = None,
    relative: bool = False,
) -> int:
    from quantmatrix.compare import Gate, compare_cells, render
    from quantmatrix.records import atomic_write_text
    from quantmatrix.summary import compare_runs, load_results, summarise

    results, errors = load_results(paths)
    for e in errors:
        print(f"skipped: {e}", file=sys.stderr)
    rows = summarise(results)
    gate = Gate(*gate_args)
    changes = compare_cells(results, rows, base, other, relative=relative)
    lines = render(changes, base, other, gate, relative=relative)
    print("\n".join([*lines, compare_runs(rows, base, other, tolerance)[-1]]))
    failed = [(c, f) for c in changes for f in gate.failures(c)]
    if markdown is not None:
        text = "\n".join(render(changes, base, other, gate, markdown=True, relative=relative))
        verdict = f"**gate failed**: {len(failed)} problem(s)" if failed else "gate passed"
        # Appended, not replaced: $GITHUB_STEP_SUMMARY collects every step's summary in one file.
        old = markdown.read_text(encoding="utf-8") if markdown.is_file() else ""
        atomic_write_text(markdown, old + text + f"\n{verdict}\n")
    for c, f in failed:
        print(f"FAIL {c.name}: {f}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m quantmatrix", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("schemas")
    s.add_argument("--check", action="store_true")
    c = sub.add_parser("check")
    c.add_argument("matrix", nargs="?", type=Path, default=Path("matrix.toml"))
    sub.add_parser("fingerprint")
    n = sub.add_parser("noise")
    n.add_argument("--seconds", type=int, default=30)
    cmp = sub.add_parser("compare")
    cmp.add_argument("results", nargs="+", type=Path, help="results directories (or files)")
    cmp.add_argument("--base", required=True, help="run id to compare against")
    cmp.add_argument("--other", required=True, help="run id compared")
    cmp.add_argument("--tolerance", type=float, default=0.10, help="ratio counted as equal within this (0.10)")
    cmp.add_argument(
        "--fail-if-slower",
        type=float,
        metavar="PCT",
        help="exit 1 if a cell is significantly slower (p < 0.05) by more than PCT percent, or stopped measuring",
    )
    cmp.add_argument(
        "--fail-if-quality-drop",
        type=float,
        metavar="PCT",
        help="exit 1 if a cell's macro-F1 or top-1 agreement falls by more than PCT percent (exact, no test)",
    )
    cmp.add_argument("--markdown", type=Path, help="also append the table as Markdown to FILE ($GITHUB_STEP_SUMMARY)")
    cmp.add_argument(
        "--relative",
        action="store_true",
        help="compare each cell's time relative to its own run's FP32 eager baseline (measured side by side in "
        "each run), so the host running faster or slower between the runs cancels",
    )
    d = sub.add_parser("doctor")
    d.add_argument("--json", action="store_true", help="structured output")
    d.add_argument("--require-gpu", action="store_true", help="exit 3 unless a GPU and the driver are usable")
    d.add_argument(
        "--expect-installed", default="", metavar="A,B", help="components that must be installed (e.g. in the image)"
    )
    args = ap.parse_args(argv)

    def command() -> int:
        if args.command == "doctor":
            from quantmatrix import doctor

            expected = [n for n in args.expect_installed.split(",") if n]
            return doctor.main(args.json, args.require_gpu, expected)
        if args.command == "schemas":
            return schemas(args.check)
        if args.command == "check":
            return check(args.matrix)
        if args.command == "noise":
            return noise(args.seconds)
        if args.command == "compare":
            for flag, value in (("--fail-if-slower", args.fail_if_slower),
                                ("--fail-if-quality-drop", args.fail_if_quality_drop)):  # fmt: skip
                if value is not None and not 0 <= value < 100:
                    raise QuantmatrixError(f"{flag} takes a percentage in [0, 100), got {value:g}")
            gates = (args.fail_if_slower, args.fail_if_quality_drop)
            return compare(args.results, args.base, args.other, args.tolerance, gates, args.markdown, args.relative)
        from quantmatrix.hardware import fingerprint

        print(fingerprint().model_dump_json(indent=2))
        return 0

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
