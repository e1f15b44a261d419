"""Benchmark of the report itself (not a test): render N result files and print the time and site size.

    python -m report.bench_render [SOURCE_DIR...] [--files 1000] [--keep DIR]

The files are copies of real results under SOURCE_DIR (default: results/) with varied variant names,
runs and machines, so the table, the charts and the raw copies grow the way a large matrix would.
Source files over 1 MiB (null-runner files with millions of samples) are left out as copy sources.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from report.data import load
from report.site import render, vega_bundle

MACHINES = 4


def make_copies(sources: list[Path], n: int, dest: Path) -> None:
    loaded = load(sources)
    paths = [s.path for s in loaded.sources if s.bytes <= 2**20]
    if not paths:
        raise SystemExit(f"no valid result files under 1 MiB in {', '.join(map(str, sources))}")
    originals = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    for i in range(n):
        data = json.loads(json.dumps(originals[i % len(originals)]))
        k = i // len(originals)
        machine = k % MACHINES
        if data["cell"]["variant"] != "reference":  # keep one FP32 baseline per machine for the speed-ups
            data["cell"]["variant"] = f"{data['cell']['variant']}-v{k // MACHINES}"
        data["fingerprint"]["machine_id"] = f"bench{machine:07d}"
        data["fingerprint"]["cpu_model"] = f"{data['fingerprint']['cpu_model']} #{machine}"
        data["run_id"] = f"bench-{machine}"
        c = data["cell"]
        name = f"{c['model']}__{c['variant']}__{c['runner']}__b{c['batch_size']}__{c['seq_mode']}__{i}.json"
        out = dest / data["run_id"] / name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=2), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m report.bench_render", description=__doc__)
    ap.add_argument("sources", nargs="*", type=Path, default=[Path("results")])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--keep", type=Path, default=None, help="write the site here instead of a temporary directory")
    ap.add_argument("--no-png", action="store_true")
    args = ap.parse_args(argv)
    vega_bundle()  # built once per vl-convert version and cached; a cold cache adds a few seconds
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results"
        make_copies(args.sources, args.files, results)
        out = args.keep or Path(tmp) / "site"
        t0 = time.perf_counter()
        render([results], out, fallbacks=not args.no_png, log=lambda line: print(line, file=sys.stderr))
        seconds = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"rendered {args.files} result files in {seconds:.2f} s; site {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
