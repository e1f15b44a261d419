"""`python -m report RESULTS_DIR... --out site/`: render the comparison site from result JSONs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from report.site import render


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m report", description=__doc__)
    ap.add_argument("dirs", nargs="*", type=Path, default=[Path("results")], help="result directories or files")
    ap.add_argument("--out", type=Path, default=Path("site"), help="output directory (replaced)")
    ap.add_argument("--no-png", action="store_true", help="skip the static PNG/SVG fallbacks of the main charts")
    ap.add_argument(
        "--full-raw",
        action="store_true",
        help="copy every raw JSON verbatim, however large (default: files over 256 KiB lose their latency samples)",
    )
    ap.add_argument("--csv", type=Path, metavar="FILE", help="also write one row per cell as CSV (quantmatrix.results)")
    ap.add_argument("--parquet", type=Path, metavar="FILE", help="also write one row per cell as Parquet")
    args = ap.parse_args(argv)
    tables = {fmt: path for fmt, path in (("csv", args.csv), ("parquet", args.parquet)) if path is not None}
    index = render(args.dirs, args.out, fallbacks=not args.no_png, full_raw=args.full_raw, tables=tables)
    print(f"open {index.resolve().as_uri()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
