"""`python -m bench`: run a matrix profile end to end on this machine and print the summary.

    python -m bench --profile default --device cpu [--runtime docker|venv|local] [--run-id ID]

Runtimes: `docker` runs every job in its own `docker run --rm` of the device's image (built first
if its content hash is new); `venv`/`local` run them as subprocesses of this Python environment.

Reruns with the same run id resume: complete artefacts and results are reused.

Two commits side by side (venv/local runtimes; docs/statistics.md, "Two commits side by side"):

    cd base && python -m bench --run-id base --artifacts A --results R --export-plan base.json
    cd head && python -m bench --run-id head --artifacts A --results R --side-by-side base.json

The second runs both plans, each job with its own checkout's code and interpreter; the run jobs of the
two take turns in one random order, so `quantmatrix compare R --base base --other head` pairs their
cells by round, and a slow phase of the machine cancels in every ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from quantmatrix.errors import run_command

if TYPE_CHECKING:
    from bench import Plan
    from quantmatrix.records import Result
    from quantmatrix.spec import Matrix, MeasureSpec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--matrix", type=Path, default=Path("matrix.toml"))
    ap.add_argument("--profile", default="default")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--runtime", choices=["docker", "venv", "local"], default="local")
    ap.add_argument("--cpuset", default=None, help="docker: CPUs the containers may use, e.g. 0-1")
    ap.add_argument("--memory", default=None, help="docker: memory limit per container, e.g. 8g")
    ap.add_argument("--wheelhouse", type=Path, default=None, help="docker: directory with torch-*+cpu wheels")
    ap.add_argument("--torch-index-url", default=None, help="docker: PyTorch wheel index ('' for none)")
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--run-id", default=None, help="default: <profile>-<device>-<machine id> (reruns resume)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per job")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default: the profile's)")
    pair = ap.add_mutually_exclusive_group()
    pair.add_argument(
        "--export-plan", type=Path, default=None, metavar="FILE",
        help="write this checkout's plan to FILE for another checkout's --side-by-side, and run nothing",
    )  # fmt: skip
    pair.add_argument(
        "--side-by-side", type=Path, default=None, metavar="FILE",
        help="also run the plan another checkout exported to FILE, its cells taking turns with this run's",
    )  # fmt: skip
    args = ap.parse_args(argv)
    # One progress line per job, visible as it happens even when stdout is a file or a pipe.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]

    import builders
    import runners
    from bench import (
        TURNS_DIR,
        Console,
        Job,
        Launcher,
        SideBySideError,
        build_record,
        execute,
        export_plan,
        plan,
        read_side_plan,
        record_failure,
        run_is_done,
        side_by_side,
    )
    from quantmatrix.hardware import describe, fingerprint
    from quantmatrix.spec import load_matrix
    from quantmatrix.store import Store
    from quantmatrix.summary import headlines, launch_overheads, load_results, render_text, summarise

    def command() -> int:
        b, r = builders.registry(), runners.registry()
        from runners.analyses import registry as analysis_kinds

        matrix = load_matrix(args.matrix, builders=b, backends=r, analyses=analysis_kinds())
        fp = fingerprint()
        run_id = args.run_id or f"{args.profile}-{args.device}-{fp.machine_id}"
        matrix_arg, artifacts_arg, results_arg = str(args.matrix), str(args.artifacts), str(args.results)
        console = Console()
        log_dir = args.results / run_id / "logs"  # each job's whole output; the console shows its progress
        launcher: Launcher = Launcher()
        launcher.name = args.runtime
        if args.runtime == "docker" and (args.export_plan or args.side_by_side):
            raise SideBySideError("--export-plan and --side-by-side run jobs as processes: use --runtime venv or local")
        if args.runtime == "docker":
            from bench.docker import (
                DockerLauncher,
                check_nvidia_runtime,
                container_paths,
                docker_binary,
                ensure_image,
                local_data,
            )

            docker = docker_binary()
            tag = ensure_image(
                args.device, torch_index_url=args.torch_index_url, wheelhouse=args.wheelhouse,
                log=console.line, status=console.status, log_path=log_dir / f"image-{args.device}.log",
            )  # fmt: skip
            if args.device == "cuda":
                check_nvidia_runtime(docker)
            # Every job reads the matrix as it was when the run was planned, even if the file is
            # edited while the run goes on; the snapshot also records what the results came from.
            snapshot = args.results.resolve() / run_id / "matrix.toml"
            snapshot.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(args.matrix, snapshot)
            launcher = DockerLauncher(
                image=tag,
                matrix=snapshot,
                data_base=args.matrix.resolve().parent,
                data=local_data(matrix),
                artifacts=args.artifacts.resolve(),
                results=args.results.resolve(),
                docker=docker,
                cpuset=args.cpuset,
                memory=args.memory,
                gpus=args.device == "cuda",
            )
            matrix_arg, artifacts_arg, results_arg = container_paths(args.matrix)
        else:
            os.environ["QUANTMATRIX_RUNTIME"] = args.runtime  # children record how they were launched
        p = plan(
            matrix,
            args.profile,
            args.device,
            builder_formats={k: v.output_format for k, v in b.items()},
            backends=r,
            run_id=run_id,
            matrix_arg=matrix_arg,
            artifacts_arg=artifacts_arg,
            results_arg=results_arg,
            repeats=args.repeats,
        )
        store = Store(args.artifacts)

        def on_failure(job: Job) -> None:
            if not job.side:  # another checkout's job writes its own failure records (its code, its matrix)
                record_failure(job, matrix, args.profile, store, args.results.resolve(), run_id)

        def is_done(job: Job) -> bool:
            if job.side:
                return job.done  # as its own planner found it
            return run_is_done(job, matrix, args.profile, store, args.results.resolve(), run_id)

        if args.export_plan:
            export_plan(
                p, args.export_plan, run_id=run_id, profile=args.profile, device=args.device,
                artifacts=args.artifacts, results=args.results, is_done=is_done,
            )  # fmt: skip
            print(f"plan of run {run_id} ({len(p.jobs)} jobs, {p.cells} cells) written to {args.export_plan}; "
                  "run it with `python -m bench --side-by-side` from the other checkout")  # fmt: skip
            return 0
        turns_root = args.results.resolve() / run_id / TURNS_DIR
        planned_cells = p.cells  # this run's; the summary below is this run's
        other = None
        if args.side_by_side:
            other = read_side_plan(args.side_by_side)
            p = side_by_side(p, other, run_id=run_id, device=args.device, artifacts=args.artifacts,
                             turns_root=turns_root)  # fmt: skip
        print(f"machine: {describe(fp)}")
        print(
            f"profile {args.profile} on {args.device}: {len(p.jobs)} jobs, {p.cells} result cells, "
            f"run id {run_id}, runtime {launcher.describe()}"
        )
        if other is not None:
            print(f"side by side with run {other.run_id} ({other.cwd}, profile {other.profile}): their cells take "
                  "turns with this run's")  # fmt: skip
        t0 = time.perf_counter()
        jobs = execute(
            p, launcher, store, timeout=args.timeout, on_failure=on_failure, is_done=is_done,
            console=console, log_dir=log_dir, turns_root=turns_root,
        )  # fmt: skip
        print(f"job logs: {log_dir}")
        print(f"\nfinished in {time.perf_counter() - t0:.0f}s; {build_record(jobs)}")
        results, errors = load_results([args.results / run_id])
        rows = summarise(results)
        print(render_text(rows))
        for line in headlines(rows):
            print(line)
        for line in analysis_lines(args.results / run_id):
            print(line)
        for line in launch_overheads(results):
            print(line)
        for line in errors:
            print(f"unreadable result: {line}", file=sys.stderr)
        failed = [j for j in jobs if j.state == "failed"]
        for j in failed:
            print(f"FAILED {j.name}: {j.reason}", file=sys.stderr)
        if other is not None:
            print_comparison(other.results / other.run_id, args.results / run_id, other.run_id, run_id)
        missing = missing_cells(p, matrix, matrix.profile(args.profile).measure, results)
        counts = Counter(r.status for r in results)
        print(f"cells: {planned_cells} planned; results " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        for cell in missing:
            print(f"MISSING result for {cell}", file=sys.stderr)
        return 1 if failed or missing else 0

    return run_command(command)


def analysis_lines(run_dir: Path) -> list[str]:
    """One line per analysis record of the run: its status and what it found."""
    from quantmatrix.errors import RecordError
    from quantmatrix.records import SensitivityResult, read_analysis

    lines = []
    for path in sorted((run_dir / "analyses").glob("*.json")):
        try:
            a = read_analysis(path)
        except RecordError as e:
            lines.append(f"unreadable analysis: {e}")
            continue
        found = a.reason or ""
        if isinstance(a, SensitivityResult) and a.status == "ok":
            found = f"{len(a.trials)} {a.granularity} trials; most sensitive: {', '.join(a.ranking[:3])}"
        lines.append(f"analysis {a.analysis} ({a.kind}): {a.status} in {a.wall_seconds or 0:.0f}s; {found}")
    return lines


def print_comparison(base_dir: Path, other_dir: Path, base: str, other: str) -> None:
    """`python -m quantmatrix compare` of the two runs measured side by side (paired by round), no gates."""
    from quantmatrix.__main__ import compare
    from quantmatrix.errors import QuantmatrixError

    print(f"\n{other} against {base}, measured side by side:")
    try:
        compare(list(dict.fromkeys([base_dir, other_dir])), base, other, tolerance=0.10)
    except QuantmatrixError as e:
        print(f"no comparison of {other} with {base}: {e}")


def missing_cells(p: Plan, matrix: Matrix, measure: MeasureSpec, results: list[Result]) -> list[str]:
    """Cells the plan promised that have no schema-valid result file (this run's jobs only)."""
    from quantmatrix.plan import cell_modes

    have = {(r.cell.model, r.cell.variant, r.cell.runner, r.cell.repeat, r.cell.batch_size, r.cell.seq_mode)
            for r in results}  # fmt: skip
    missing = []
    for job in p.jobs:
        if job.kind != "run" or job.side:
            continue
        for b, s in cell_modes(matrix.models[job.model], measure):
            if (job.model, job.variant, job.runner, job.repeat, b, s) not in have:
                missing.append(f"{job.model}/{job.variant} on {job.runner} b{b} {s} round {job.repeat + 1}")
    return missing


if __name__ == "__main__":
    sys.exit(main())
