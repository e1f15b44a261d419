"""`python -m runners`: measure artefacts.

python -m runners job --profile P --model M --variant V --runner R [--run-id ID]
    one run job (what each container/venv job executes): guard, score, time every cell
python -m runners list
    the registered backends
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from quantmatrix.errors import QuantmatrixError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m runners", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("command", choices=["job", "list"])
    ap.add_argument("--matrix", type=Path, default=Path("matrix.toml"))
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--profile", default="default")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--variant", default="reference")
    ap.add_argument("--runner", default="torch-eager")
    ap.add_argument("--run-id", default="local")
    ap.add_argument("--repeat", type=int, default=0, help="round index when a run measures every cell repeatedly")
    args = ap.parse_args(argv)
    from runners import registry

    try:
        backends = registry()
        if args.command == "list":
            for name, info in sorted(backends.items()):
                print(f"{name:14} formats={','.join(info.formats):22} devices={','.join(info.devices)}")
            return 0
        from quantmatrix.spec import load_matrix
        from runners.job import RunJob

        matrix = load_matrix(args.matrix, backends=backends)
        for what, name, known in (("model", args.model, matrix.models), ("runner", args.runner, matrix.runners)):
            if name not in known:
                raise QuantmatrixError(f"{args.matrix}: unknown {what} {name!r}; defined: {sorted(known)}")
        if args.variant != "reference" and args.variant not in matrix.variants:
            raise QuantmatrixError(
                f"{args.matrix}: unknown variant {args.variant!r}; defined: {sorted(matrix.variants)}"
            )
        job = RunJob(
            matrix,
            args.profile,
            args.model,
            args.variant,
            args.runner,
            artifacts=args.artifacts,
            results=args.results,
            run_id=args.run_id,
            repeat=args.repeat,
        )
        results = job.run()
        failed = [r for r in results if r.status == "failed"]
        return 1 if failed else 0
    except QuantmatrixError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
