"""`python -m runners.predict "some headline"`: every built artefact this machine can run, on one input.

Loads each built variant of the model (and the FP32 reference) on its runners the way run jobs do
(`runners.tasks.classification.open_artefact`: matrix runner params, label-map and input guard),
prints one aligned table of top-5 labels with probabilities and the latency of one call after a
warm-up call, flags top-1 disagreement with the FP32 reference, and writes `predict.json`,
`predict.html` and `predict.png` (the confidence chart, drawn by `python -m report.predict` in its
own process) under --out. By default each variant runs on one runner per backend (the first the
matrix allows); `--all-runners` runs every one (torch.compile compiles first).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from quantmatrix.capabilities import Capability
from quantmatrix.errors import QuantmatrixError
from quantmatrix.hardware import fingerprint
from quantmatrix.inputs import encode
from quantmatrix.metrics import top_k
from quantmatrix.plan import REFERENCE, build_jobs
from quantmatrix.records import Manifest, Prediction, PredictionRow, write_record
from quantmatrix.spec import Matrix, MeasureSpec, RunnerSpec, load_matrix
from quantmatrix.store import Store, now_iso
from runners import RunnerInfo, Skip, registry
from runners.guard import GuardFailure, check_output
from runners.job import threads_for
from runners.tasks.classification import open_artefact


class PredictError(QuantmatrixError):
    """Nothing to predict with, or nothing to predict: the message says what to do."""


def runners_for(
    matrix: Matrix, variant: str, manifest: Manifest, backends: dict[str, RunnerInfo], *, every: bool
) -> list[RunnerSpec]:
    """The matrix runners that read this artefact's format (the variant's own list when it has one)."""
    allowed = matrix.variants[variant].runners if variant != REFERENCE else ()
    out, seen = [], set()
    for spec in matrix.runners.values():
        info = backends.get(spec.backend)
        if info is None or not info.can(Capability.SCORES_QUALITY) or manifest.format not in info.formats:
            continue
        if allowed and spec.name not in allowed:
            continue
        if every or spec.backend not in seen:
            out.append(spec)
            seen.add(spec.backend)
    return out


def _check_text(text: str, tokenizer: object) -> None:
    if not text.strip():
        raise PredictError('empty input: give a headline, e.g. python -m runners.predict "Stocks rally as rates hold"')
    enc = tokenizer(text, add_special_tokens=False)  # type: ignore[operator]
    unk = getattr(tokenizer, "unk_token_id", None)
    ids = list(enc["input_ids"])
    if not ids or (unk is not None and all(i == unk for i in ids)):
        raise PredictError(f"unknown input: the tokenizer knows none of the words in {text!r} (all [UNK])")


def predict(
    matrix: Matrix,
    model: str,
    text: str,
    artifacts: Path,
    *,
    runner_names: tuple[str, ...] = (),
    every_runner: bool = False,
    threads: int = 0,
    log: Callable[[str], None] = print,
) -> Prediction:
    """Run `text` through every built artefact of `model` on this machine's runners."""
    if model not in matrix.models:
        raise PredictError(f"{matrix.path}: unknown model {model!r}; defined: {sorted(matrix.models)}")
    if matrix.models[model].task != "text-classification":
        raise PredictError(f"model {model!r} is a {matrix.models[model].task} model; predict needs a classifier")
    if not text.strip():
        _check_text(text, None)
    for name in runner_names:
        if name not in matrix.runners:
            raise PredictError(f"{matrix.path}: unknown runner {name!r}; defined: {sorted(matrix.runners)}")
    store = Store(artifacts)
    jobs = build_jobs(matrix, model, tuple(matrix.variants))
    ref_job = jobs[0]
    reference = store.lookup(ref_job.key)
    if reference is None:
        raise PredictError(
            f"no artefacts built for {model!r} under {store.root} (the FP32 reference {ref_job.key} is missing): "
            f"build them with `python -m builders build --model {model} --variant NAME` or `nox -s benchmark-cpu`"
        )
    labels = [reference.id2label[str(i)] for i in range(len(reference.id2label))]
    backends = dict(registry())
    max_length = matrix.models[model].max_length
    rows: list[PredictionRow] = []
    missing = []
    checked = False
    for job in jobs:
        manifest = store.lookup(job.key)
        if manifest is None:
            missing.append(job.variant)
            continue
        for spec in runners_for(matrix, job.variant, manifest, backends, every=every_runner):
            if runner_names and spec.name not in runner_names:
                continue
            n = threads or threads_for(MeasureSpec(), dict(spec.params))
            row = PredictionRow(
                variant=job.variant, runner=spec.name, backend=spec.backend, precision=manifest.precision,
                artifact_key=job.key, status="ok",
            )  # fmt: skip
            try:
                opened = open_artefact(
                    matrix, spec, backends[spec.backend], store.path(job.key), manifest, reference, n
                )
                if not checked:
                    _check_text(text, opened.tokenizer)
                    checked = True
                feed = encode(opened.tokenizer, [text], opened.names, max_length)
                opened.session.predict(feed)  # warm-up (torch.compile compiles here)
                t0 = time.perf_counter_ns()
                logits = np.asarray(opened.session.predict(feed))
                row.latency_ms = (time.perf_counter_ns() - t0) / 1e6
                check_output(logits, 1, len(labels))
                row.top5 = top_k(logits[0], labels)
                row.load_ms = opened.load_ms
            except PredictError:
                raise
            except Skip as e:
                row.status, row.reason = "skipped", str(e)
            except (GuardFailure, QuantmatrixError) as e:
                row.status, row.reason = "failed", f"guard: {e}" if isinstance(e, GuardFailure) else str(e)
            except Exception as e:  # one broken artefact must not hide the others
                row.status, row.reason = "failed", f"{type(e).__name__}: {e}".splitlines()[0][:300]
            rows.append(row)
            log(f"  {job.variant} @ {spec.name}: {row.status}" + (f" ({row.reason})" if row.reason else ""))
    if missing:
        log(f"not built (skipped): {', '.join(missing)}")
    ref_row = next((r for r in rows if r.variant == REFERENCE and r.status == "ok"), None)
    ref_top = ref_row.top5[0][0] if ref_row else None
    for r in rows:
        if r.status == "ok" and ref_top is not None:
            r.differs_from_reference = r.top5[0][0] != ref_top
    used = {r.runner for r in rows}
    n_threads = threads or max((threads_for(MeasureSpec(), dict(matrix.runners[u].params)) for u in used), default=0)
    return Prediction(
        text=text, model=model, reference_top=ref_top, rows=rows, threads=n_threads, fingerprint=fingerprint(),
        created=now_iso(),
    )  # fmt: skip


def table(p: Prediction) -> str:
    """The aligned text table printed by the command."""
    head = ["variant", "runner", "backend", "precision", "top-5 (probability)", "ms", "vs FP32"]
    lines = []
    for r in p.rows:
        if r.status == "ok":
            top = "  ".join(f"{label} {prob:.3f}" for label, prob in r.top5)
            flag = "DIFFERS" if r.differs_from_reference else ("same" if r.differs_from_reference is not None else "-")
            ms = f"{r.latency_ms:.2f}" if r.latency_ms is not None else "-"
        else:
            top, ms, flag = f"{r.status}: {r.reason}", "-", "-"
        lines.append([r.variant, r.runner, r.backend, r.precision, top, ms, flag])
    widths = [max(len(row[i]) for row in [head, *lines]) for i in range(len(head))]
    right = {5}
    fmt = [
        "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)).rstrip()
        for row in [head, *lines]
    ]
    fmt.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(fmt)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m runners.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("text", nargs="?", default="", help="the input text (a news headline for the default model)")
    ap.add_argument("--matrix", type=Path, default=Path("matrix.toml"))
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--runner", action="append", default=[], help="only these runners (repeatable)")
    ap.add_argument("--all-runners", action="store_true", help="every runner per variant, not one per backend")
    ap.add_argument("--threads", type=int, default=0, help="0: the runner's or every usable core")
    ap.add_argument("--out", type=Path, default=Path("predict"), help="where predict.json/.html/.png go")
    ap.add_argument("--no-chart", action="store_true", help="only the table and predict.json")
    args = ap.parse_args(argv)
    try:
        if not args.text.strip():
            _check_text(args.text, None)
        matrix = load_matrix(args.matrix, backends=registry())
        result = predict(
            matrix, args.model, args.text, args.artifacts, runner_names=tuple(args.runner),
            every_runner=args.all_runners, threads=args.threads, log=lambda line: print(line, file=sys.stderr),
        )  # fmt: skip
    except QuantmatrixError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{result.model}: {result.text!r}  (FP32 reference top-1: {result.reference_top or 'not available'})")
    print(table(result))
    write_record(result, args.out / "predict.json")
    written = [args.out / "predict.json"]
    print("wrote " + ", ".join(str(p) for p in written))
    if not args.no_chart:
        # The report stage draws the chart from the record, in its own process: runners never import the report.
        # It runs from the same source tree as this module, whatever the working directory.
        tree = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (tree, os.environ.get("PYTHONPATH")) if p)}
        drawn = subprocess.run(
            [sys.executable, "-m", "report.predict", str(args.out / "predict.json"), "--out", str(args.out)],
            capture_output=True, text=True, check=False, env=env,
        )  # fmt: skip
        if drawn.returncode != 0:
            print(f"error: the chart was not drawn: {drawn.stderr.strip()[-600:]}", file=sys.stderr)
            return 1
        print("wrote " + ", ".join(drawn.stdout.split()))
    ok = [r for r in result.rows if r.status == "ok"]
    if not ok:
        print("error: no artefact could run on this machine (see the reasons above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
