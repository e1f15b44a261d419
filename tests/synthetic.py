"""Result records with seeded lognormal latencies, for tests of what consumes timing data.

Only the statistics and tables are under test with these; the real pipeline's results are tested in
test_runs / test_report.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from quantmatrix.capabilities import Capability
from quantmatrix.metrics import percentile_summary
from quantmatrix.records import Agreement, Cell, Fingerprint, Latency, Quality, Result, write_record

PRECISION = {"reference": "fp32", "onnx-fp32": "fp32"}
BACKEND = {"torch-eager": "torch", "ort-cpu": "onnxruntime"}


def result(
    variant: str,
    runner: str,
    median_ms: float,
    *,
    run_id: str = "r",
    seed: int = 0,
    n: int = 200,
    sigma: float = 0.1,
    macro_f1: float = 0.9,
    top1: float = 0.99,
    verdict: str = "pass",
    commit: str | None = "a" * 40,
    commit_date: str | None = "2026-12-01T10:00:00+00:00",
    batch_size: int = 1,
    model: str = "tiny",
) -> Result:
    """One ok cell whose samples are `median_ms` times a seeded lognormal."""
    samples = (median_ms * np.random.default_rng(seed).lognormal(0.0, sigma, n)).tolist()
    fp = Fingerprint(
        hostname_hash="h", machine_id="m0", cpu_model="Test CPU", cpu_cores_logical=2, ram_bytes=2**33,
        os="Linux", python="3.11", git_commit=commit, git_commit_date=commit_date,
    )  # fmt: skip
    return Result(
        run_id=run_id,
        cell=Cell(
            model=model,
            variant=variant,
            runner=runner,
            backend=BACKEND.get(runner, runner),
            precision=PRECISION.get(variant, "int8"),
            device="cpu",
            batch_size=batch_size,
            seq_mode="padded",
        ),
        capabilities=_capabilities(BACKEND.get(runner, runner)),
        status="ok",
        verdict="reference" if variant == "reference" else verdict,  # type: ignore[arg-type]
        fingerprint=fp,
        threads=2,
        latency=Latency(samples=samples, iterations=n, warmup=5, **percentile_summary(samples)),
        throughput_per_s=1000.0 / median_ms * batch_size,
        quality=Quality(examples=100, accuracy=macro_f1, macro_f1=macro_f1, per_class={}, confusion=[]),
        agreement=Agreement(examples=100, top1=top1, mean_kl=0.01, max_abs_dlogit=0.1, flips=1),
        started=f"2026-12-01T10:{seed % 60:02d}:00",
        finished=f"2026-12-01T10:{seed % 60:02d}:30",
    )


def _capabilities(backend: str) -> list[Capability]:
    """What the real backends declare (runners/backends/), for synthetic cells of those backends."""
    if backend == "null":
        return [Capability.MEASURES_OVERHEAD]
    if backend == "torch":
        return [Capability.SCORES_QUALITY, Capability.FP32_BASELINE, Capability.GENERATES]
    return [Capability.SCORES_QUALITY, Capability.GENERATES]


def write_run(root: Path, results: list[Result]) -> Path:
    """Write results as `root/<run>/<cell>.json`; returns root."""
    for r in results:
        c = r.cell
        write_record(r, root / r.run_id / f"{c.model}__{c.variant}__{c.runner}__b{c.batch_size}__{c.seq_mode}.json")
    return root
