"""`python -m runners`: measure artefacts.

python -m runners job --profile P --model M --variant V --runner R [--run-id ID]
    one run job (what each container/venv job executes): guard, score, time every cell
python -m runners analysis --name N [--profile P] [--run-id ID]
    one analysis of the matrix ([analyses.N]): writes results/<run-id>/analyses/N.json
python -m runners list
    the registered backends and analysis kinds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from quantmatrix.errors import QuantmatrixError, run_command
from quantmatrix.machine_lock import give_way, give_way_to, lock_dir
from quantmatrix.plan import check_planned_key
from quantmatrix.turns import Participant


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m runners", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("command", choices=["job", "analysis", "list"])
    ap.add_argument("--matrix", type=Path, default=Path("matrix.toml"))
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--profile", default="default")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--variant", default="reference")
    ap.add_argument("--runner", default="torch-eager")
    ap.add_argument("--run-id", default="local")
    ap.add_argument("--repeat", type=int, default=0, help="round index when a run measures every cell repeatedly")
    ap.add_argument(
        "--turns", type=Path, default=None, metavar="DIR",
        help="interleaved timing: the launcher's turn directory (quantmatrix.turns); needs --turn-name",
    )  # fmt: skip
    ap.add_argument("--turn-name", default=None, help="this job's participant name in --turns")
    ap.add_argument("--expect-key", default=None, help="job: the artefact key the launcher planned for the variant")
    ap.add_argument("--name", default=None, help="analysis: its name in the matrix ([analyses.<name>])")
    args = ap.parse_args(argv)
    if args.command != "list":
        # Loading and scoring are untimed: they pause while another process times (machine_lock.give_way),
        # starting here, before the heavy imports.
        give_way_to(lock_dir(args.artifacts), log=lambda line: print(line, flush=True))
        give_way()
    from runners import registry
    from runners.analyses import registry as analysis_registry

    def command() -> int:
        backends = registry()
        kinds = analysis_registry()
        if args.command == "list":
            for name, info in sorted(backends.items()):
                print(
                    f"{name:14} formats={','.join(info.formats):22} devices={','.join(info.devices):9} "
                    f"capabilities={','.join(sorted(info.capabilities))}"
                )
            for kind in sorted(kinds):
                print(f"analysis {kind}")
            return 0
        from quantmatrix.spec import load_matrix
        from runners.job import RunJob

        matrix = load_matrix(args.matrix, backends=backends, analyses=kinds)
        if args.command == "analysis":
            from runners.analyses import AnalysisJob

            if not args.name:
                raise QuantmatrixError(f"analysis: --name is required; defined: {sorted(matrix.analyses)}")
            record = AnalysisJob(
                matrix, args.name, artifacts=args.artifacts, results=args.results, run_id=args.run_id,
                profile=args.profile if args.profile in matrix.profiles else None,
            ).run()  # fmt: skip
            return 1 if record.status == "failed" else 0
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
            turns=_participant(args.turns, args.turn_name),
        )
        check_planned_key(f"run {args.model}/{args.variant} on {args.runner}", args.expect_key, job.key)
        results = job.run()
        failed = [r for r in results if r.status == "failed"]
        return 1 if failed else 0

    return run_command(command)


def _participant(directory: Path | None, name: str | None) -> Participant | None:
    if directory is None:
        return None
    if not name:
        raise QuantmatrixError("--turns needs --turn-name (this job's participant name)")
    return Participant(directory, name)


if __name__ == "__main__":
    sys.exit(main())
