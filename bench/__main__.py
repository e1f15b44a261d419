"""`python -m bench`: run a matrix profile end to end on this machine and print the summary.

    python -m bench --profile default --device cpu [--runtime local|venv|docker] [--run-id ID]

Reruns with the same run id resume: complete artefacts and results are reused.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from quantmatrix.errors import QuantmatrixError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--matrix", type=Path, default=Path("matrix.toml"))
    ap.add_argument("--profile", default="default")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--runtime", choices=["local", "venv"], default="local")
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--run-id", default=None, help="default: <profile>-<device>-<machine id> (reruns resume)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per job")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default: the profile's)")
    args = ap.parse_args(argv)

    import builders
    import runners
    from bench import Launcher, execute, plan
    from quantmatrix.hardware import describe, fingerprint
    from quantmatrix.spec import load_matrix
    from quantmatrix.store import Store
    from quantmatrix.summary import load_results, render_text, summarise

    try:
        b, r = builders.registry(), runners.registry()
        matrix = load_matrix(args.matrix, builders=b, backends=r)
        fp = fingerprint()
        run_id = args.run_id or f"{args.profile}-{args.device}-{fp.machine_id}"
        p = plan(
            matrix,
            args.profile,
            args.device,
            builder_formats={k: v.output_format for k, v in b.items()},
            backend_formats={k: v.formats for k, v in r.items()},
            run_id=run_id,
            matrix_arg=str(args.matrix),
            artifacts_arg=str(args.artifacts),
            results_arg=str(args.results),
            repeats=args.repeats,
        )
        print(f"machine: {describe(fp)}")
        print(
            f"profile {args.profile} on {args.device}: {len(p.jobs)} jobs, {p.cells} result cells, "
            f"run id {run_id}, runtime {args.runtime}"
        )
        t0 = time.perf_counter()
        jobs = execute(p, Launcher(), Store(args.artifacts), timeout=args.timeout)
        print(f"\nfinished in {time.perf_counter() - t0:.0f}s")
        results, errors = load_results([args.results / run_id])
        print(render_text(summarise(results)))
        for line in errors:
            print(f"unreadable result: {line}", file=sys.stderr)
        failed = [j for j in jobs if j.state == "failed"]
        for j in failed:
            print(f"FAILED {j.name}: {j.reason}", file=sys.stderr)
        return 1 if failed else 0
    except QuantmatrixError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
