"""`python -m builders`: build the FP32 reference or any variant of the matrix in this process.

python -m builders reference [--model minilm]          fine-tune + save the reference, print F1
python -m builders build --model M --variant V [...]   build variants (and what they need)
python -m builders job --model M --variant V           build one job whose inputs exist (containers)
python -m builders list                                the registered builders
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from builders import build_with_deps, registry, run_job
from quantmatrix.errors import QuantmatrixError, run_command
from quantmatrix.machine_lock import give_way, give_way_to, lock_dir
from quantmatrix.plan import REFERENCE, build_jobs, check_planned_key
from quantmatrix.spec import load_matrix
from quantmatrix.store import Store


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m builders", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("command", choices=["reference", "build", "job", "list"])
    ap.add_argument("--matrix", type=Path, default=Path("matrix.toml"))
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--variant", action="append", default=[], help="repeatable")
    ap.add_argument("--force", action="store_true", help="rebuild even if a complete artefact exists")
    ap.add_argument("--expect-key", default=None, help="job: the key the launcher planned for the (one) variant")
    args = ap.parse_args(argv)

    def command() -> int:
        builders = registry()
        if args.command == "list":
            for name, info in sorted(builders.items()):
                print(f"{name:28} -> {info.output_format:8} ({info.device})")
            return 0
        # Building is untimed: it pauses while another process times (quantmatrix.machine_lock.give_way).
        give_way_to(lock_dir(args.artifacts), log=lambda line: print(line, flush=True))
        give_way()
        matrix = load_matrix(args.matrix, builders=builders)
        if args.model not in matrix.models:
            raise QuantmatrixError(f"{args.matrix}: unknown model {args.model!r}; defined: {sorted(matrix.models)}")
        store = Store(args.artifacts, log=print)
        # Only temp directories whose build died: another run's build in progress is left alone.
        store.clean_partials()
        if args.command == "job":
            jobs = {
                j.variant: j for j in build_jobs(matrix, args.model, tuple(v for v in args.variant if v != REFERENCE))
            }
            for name in args.variant or [REFERENCE]:
                job = jobs[name]
                check_planned_key(f"build {args.model}/{name}", args.expect_key, job.key)
                if store.lookup(job.key) is None or args.force:
                    run_job(matrix, job, store, force=args.force)
                print(f"{job.name}: {store.path(job.key)}")
            return 0
        variants = tuple(args.variant) if args.command == "build" else ()
        failures: dict[str, str] = {}
        built = build_with_deps(matrix, args.model, variants, store, force=args.force, failures=failures)
        if failures:
            for variant, reason in failures.items():
                print(f"error: {args.model}/{variant}: {reason}", file=sys.stderr)
            return 1
        ref = built[REFERENCE]
        if args.command == "reference":
            m = ref.metrics
            print(f"reference {args.model}: {store.path(ref.key)}")
            if "test_macro_f1" in m:
                print(
                    f"test macro-F1 {m['test_macro_f1']:.4f}  accuracy {m['test_accuracy']:.4f}  "
                    f"(validation macro-F1 {m['validation_macro_f1']:.4f}; fine-tune {m['train_seconds']:.1f}s)"
                )
        return 0

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
