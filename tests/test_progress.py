"""Progress events, the launcher's status line and job logs, and the known-harmless warnings kept off the console.

Launcher tests run real subprocesses (the same `Launcher` a `--runtime venv` run uses) and read what
a `Console` printed and what the job's log file holds.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from conftest import TINY_MATRIX

import builders
from bench import Console, Job, Launcher, Plan, execute, failure_line, log_name
from quantmatrix.plan import REFERENCE, build_jobs
from quantmatrix.progress import (
    EVENT_PREFIX,
    HARMLESS,
    Progress,
    ProgressEvent,
    TimingProgress,
    eta_seconds,
    format_duration,
    harmless_table,
    is_harmless,
    is_warning,
    parse_event,
    timing_seconds_left,
)
from quantmatrix.spec import MeasureSpec, load_matrix
from quantmatrix.store import Store

REPO = Path(__file__).resolve().parent.parent


def test_event_round_trips_through_its_line():
    event = ProgressEvent(
        what="fine-tune", done=140, total=400, elapsed_s=50.0, eta_s=250.0, unit="step", note="epoch 2/3"
    )
    line = event.line()
    assert line.startswith(EVENT_PREFIX) and "\n" not in line
    assert parse_event(line) == event
    assert event.describe() == "fine-tune: epoch 2/3 step 140/400, ETA 4m10s"
    final = ProgressEvent(what="calibrate", done=25, total=25, elapsed_s=61, eta_s=None, unit="batch", final=True)
    assert parse_event(final.line()) == final and final.describe() == "calibrate: batch 25/25, done in 1m01s"


@pytest.mark.parametrize(
    "line",
    [
        "epoch 1/3: mean loss 0.5",  # ordinary output
        EVENT_PREFIX + "{not json",
        EVENT_PREFIX + json.dumps({"v": 99, "what": "x", "done": 1, "total": 2, "elapsed_s": 1, "eta_s": None}),
        EVENT_PREFIX + json.dumps({"v": 1, "what": "x", "done": 1}),  # fields missing
        EVENT_PREFIX + json.dumps({"v": 1, "what": "x", "done": "a", "total": 2, "elapsed_s": 1, "eta_s": None}),
        EVENT_PREFIX + "[1, 2]",
    ],
)
def test_malformed_event_lines_are_ordinary_output(line):
    assert parse_event(line) is None


def test_eta_is_the_rate_so_far_applied_to_what_is_left():
    assert eta_seconds(25, 100, 10.0) == pytest.approx(30.0)
    assert eta_seconds(100, 100, 10.0) == 0.0
    assert eta_seconds(0, 100, 10.0) is None  # nothing done: no rate yet
    durations = [format_duration(s) for s in (0, 44.6, 60, 250, 3599, 3720)]
    assert durations == ["0s", "45s", "1m00s", "4m10s", "59m59s", "1h02m"]


def test_timing_loop_eta_follows_its_stopping_rule():
    # 10 calls in 1 s (0.1 s each): 30 calls need 3 s, more than the 2 s minimum -> 2 s left.
    assert timing_seconds_left(10, 1.0, 30, 2.0, 5000, 30.0) == pytest.approx(2.0)
    # Fast calls: the minimum duration decides.
    assert timing_seconds_left(1000, 0.5, 30, 2.0, 5000, 30.0) == pytest.approx(1.5)
    # The iteration cap stops a microsecond loop early: 5000 calls at 0.1 ms take 0.5 s.
    assert timing_seconds_left(1000, 0.1, 30, 2.0, 5000, 30.0) == pytest.approx(0.4)
    # A very slow model: the time cap.
    assert timing_seconds_left(2, 10.0, 30, 2.0, 5000, 30.0) == pytest.approx(20.0)


def test_progress_emits_at_entry_and_exit_and_no_more_often_than_asked():
    out = io.StringIO()
    with Progress(1000, "scan", unit="unit", every=3600, stream=out) as p:
        for i in range(1, 1001):
            p.update(i)
    events = [parse_event(line) for line in out.getvalue().splitlines()]
    assert [(e.done, e.final) for e in events if e] == [(0, False), (1000, True)]
    assert len(events) == 2 and events[1].eta_s is None

    out = io.StringIO()
    with Progress(4, "search", unit="k", eta=False, every=0, stream=out) as p:
        for k in range(4):
            p.update(k, note=f"k={k}")
    events = [parse_event(line) for line in out.getvalue().splitlines()]
    assert [e.done for e in events if e] == [0, 0, 1, 2, 3, 3]
    assert all(e is not None and e.eta_s is None for e in events)  # an upper-bound total gives no ETA


def test_time_predict_reports_its_iterations_through_the_hook():
    import numpy as np

    from runners.measure import Inputs, time_predict

    spec = MeasureSpec(warmup=1, min_iterations=5, min_seconds=0.0, max_seconds=5.0, max_iterations=50)
    inputs = Inputs(batch_size=1, seq_mode="padded", batches=({"input_ids": np.zeros((1, 4), dtype=np.int64)},))
    out = io.StringIO()
    with TimingProgress(
        "timing b1 padded", min_iterations=5, min_seconds=0.0, max_iterations=50, max_seconds=5.0, every=0, stream=out
    ) as tick:
        latency = time_predict(lambda batch: batch["input_ids"].sum(), inputs, spec, progress=tick)
    events = [e for e in map(parse_event, out.getvalue().splitlines()) if e]
    assert events[-1].final and events[-1].done == latency.iterations == 5
    assert [e.done for e in events[1:-1]] == [1, 2, 3, 4, 5]
    assert all(e.eta_s is not None and e.eta_s >= 0 for e in events[1:-1])
    # Rate-limited to nothing between entry and exit, the final event still has the loop's last count.
    out = io.StringIO()
    with TimingProgress("t", min_iterations=5, min_seconds=0.0, max_iterations=50, max_seconds=5.0, every=3600,
                        stream=out) as tick:  # fmt: skip
        latency = time_predict(lambda batch: batch["input_ids"].sum(), inputs, spec, progress=tick)
    events = [e for e in map(parse_event, out.getvalue().splitlines()) if e]
    assert [(e.done, e.final) for e in events] == [(0, False), (latency.iterations, True)]


def _execute(tmp_path: Path, *jobs: Job) -> tuple[list[Job], str]:
    screen = io.StringIO()
    done = execute(
        Plan(jobs=list(jobs), cells=0), Launcher(), Store(tmp_path / "artifacts"),
        console=Console(screen, tty=False, every=0), log_dir=tmp_path / "logs",
    )  # fmt: skip
    return done, screen.getvalue()


def test_launcher_shows_a_subprocess_jobs_progress_and_logs_all_it_prints(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the child imports this checkout's quantmatrix (`-c` puts the cwd first)
    child = (
        "from quantmatrix.progress import Progress\n"
        "print('loading the model')\n"
        "with Progress(4, 'fine-tune', unit='step', every=0) as p:\n"
        "    for step in range(1, 5):\n"
        "        p.update(step, note=f'epoch {(step + 1) // 2}/2')\n"
    )
    [job], screen = _execute(tmp_path, Job(kind="build", name="build tiny/reference", argv=["-c", child]))
    assert job.state == "done", job.log_tail
    lines = screen.splitlines()
    assert "1/1 running  build tiny/reference: fine-tune: epoch 1/2 step 1/4, ETA" in "\n".join(lines)
    assert any("build tiny/reference: fine-tune: epoch 2/2 step 4/4, done in" in line for line in lines)
    assert "loading the model" not in screen  # the job's own output goes to its log
    assert job.log_path == tmp_path / "logs" / log_name(job) and job.log_path.name == "build_tiny_reference.log"
    log = job.log_path.read_text()
    assert "loading the model" in log and log.count(EVENT_PREFIX) == 6
    assert EVENT_PREFIX not in job.log_tail


@pytest.mark.slow
def test_known_harmless_library_warnings_go_to_the_log_only(tmp_path, monkeypatch):
    """Real notices from torch and transformers, and one unlisted warning that must reach the console."""
    monkeypatch.chdir(tmp_path)
    child = (
        "import warnings\n"
        "warnings.simplefilter('always')\n"
        "import torch, transformers\n"
        "from torch.utils import _pytree\n"
        "class Pair:\n"
        "    pass\n"
        "_pytree._register_pytree_node(Pair, lambda p: ([], None), lambda c, x: Pair())\n"
        "config = transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,\n"
        "                                 intermediate_size=8, num_labels=3)\n"
        "transformers.BertModel(config).save_pretrained('base')\n"
        "transformers.logging.set_verbosity_warning()\n"
        "transformers.BertForSequenceClassification.from_pretrained('base', num_labels=3)\n"
        "warnings.warn('calibration saw only 3 batches', UserWarning)\n"
        "raise SystemExit('error: the real reason')\n"
    )
    [job], screen = _execute(tmp_path, Job(kind="build", name="build tiny/x", argv=["-c", child]))
    log = job.log_path.read_text()
    assert "_register_pytree_node" in log and "You should probably TRAIN this model" in log, log
    assert "_register_pytree_node" not in screen and "TRAIN this model" not in screen and "Some weights" not in screen
    [warning] = [line for line in screen.splitlines() if "warning (" in line]
    assert warning.startswith("  warning (build tiny/x): ") and "UserWarning: calibration saw only 3 batches" in warning
    assert job.state == "failed" and "error: the real reason" in job.reason and str(job.log_path) in screen
    assert "TRAIN this model" not in job.log_tail and "_register_pytree_node" not in job.log_tail


def test_failure_line_skips_harmless_notices_printed_after_the_error():
    output = (
        "Traceback (most recent call last):\n"
        "RuntimeError: shape mismatch\n"
        "huggingface/tokenizers: The current process just got forked, after parallelism has already been used. "
        "Disabling parallelism to avoid deadlocks...\n"
        "To disable this warning, you can either:\n"
        "\t- Avoid using `tokenizers` before the fork if possible\n"
        "\t- Explicitly set the environment variable TOKENIZERS_PARALLELISM=(true | false)\n"
    )
    assert failure_line(output) == "RuntimeError: shape mismatch"


def test_harmless_list_is_documented_and_each_entry_says_why():
    assert all(h.name and h.why for h in HARMLESS)
    assert harmless_table() in (REPO / "docs" / "progress.md").read_text(), (
        "docs/progress.md's table of harmless notices is stale: paste quantmatrix.progress.harmless_table()"
    )
    assert is_harmless("x.py:3: FutureWarning: `torch.utils._pytree._register_pytree_node` is deprecated.")
    assert not is_warning("x.py:3: FutureWarning: `torch.utils._pytree._register_pytree_node` is deprecated.")
    assert is_warning("x.py:3: UserWarning: something new") and not is_warning("epoch 1: loss 0.3")
    # torch's own logger, as seen in real job logs: a pytree notice is harmless, another warning is not.
    pytree = "W1202 18:03:29.539000 5111 torch/utils/_pytree.py:630] <enum 'KernelPreference'> is an Enum subclass"
    other = "W1202 18:03:29.539000 5111 torch/_dynamo/convert_frame.py:1016] torch._dynamo hit config.recompile_limit"
    assert is_harmless(pytree) and not is_warning(pytree) and is_warning(other)


@pytest.mark.slow
def test_a_real_build_jobs_fine_tune_progress_reaches_the_launchers_line(tmp_path, monkeypatch):
    """The tiny reference fine-tuned in a subprocess, as `python -m bench --runtime venv` runs it."""
    work = tmp_path / "w"
    work.mkdir()
    # 64 examples, 1 epoch: a few real optimiser steps are enough to see the events cross the process boundary.
    small = TINY_MATRIX.replace(
        'method = "full"\nepochs = 2\n', 'method = "full"\nepochs = 1\nmax_train_examples = 64\n'
    )
    assert small != TINY_MATRIX
    (work / "matrix.toml").write_text(small)
    matrix = load_matrix(work / "matrix.toml", builders=builders.registry())
    [ref] = [b for b in build_jobs(matrix, "tiny", ()) if b.variant == REFERENCE]
    monkeypatch.chdir(REPO)
    argv = ["-m", "builders", "job", "--matrix", str(work / "matrix.toml"), "--artifacts", str(work / "artifacts")]
    job = Job(kind="build", name="build tiny/reference", key=ref.key, argv=[*argv, "--model", "tiny"])
    [job], screen = _execute(work, job)
    assert job.state == "done", job.log_tail
    assert "build tiny/reference: fine-tune: step 0/" in screen and ", done in " in screen, screen
    assert (work / "artifacts" / ref.key / "manifest.json").is_file()


@pytest.mark.docker
def test_image_build_progress_counts_buildkit_steps(tmp_path):
    """A real (tiny, uncached) BuildKit build: its plain output read into steps done / total."""
    import subprocess
    import uuid

    from bench import JobOutput, stream
    from bench.docker import BuildSteps, docker_binary

    docker = docker_binary()
    if subprocess.run([docker, "info"], capture_output=True).returncode != 0:
        pytest.skip("no Docker engine reachable (containers/provision.sh starts one on Debian)")
    base = "debian:bookworm-slim"
    if subprocess.run([docker, "image", "inspect", base], capture_output=True).returncode != 0:
        pytest.skip(f"no local {base} image (containers/provision.sh makes one)")
    token = uuid.uuid4().hex  # new content each time: no step is cached
    (tmp_path / "Dockerfile").write_text(
        f"FROM {base} AS one\nRUN echo {token} > /a\nFROM {base}\nCOPY --from=one /a /a\nRUN cat /a\n"
    )
    tag = f"quantmatrix-progress-test:{token[:12]}"
    steps = BuildSteps()
    seen: list[str] = []
    output = JobOutput(tmp_path / "build.log", on_progress=seen.append, parse=steps.feed)
    cmd = [docker, "build", "--progress=plain", "-t", tag, str(tmp_path)]
    try:
        code, text = stream(cmd, timeout=300, env={**os.environ, "DOCKER_BUILDKIT": "1"}, output=output)
    finally:
        output.close()
        subprocess.run([docker, "rmi", "-f", tag], capture_output=True)
    assert code == 0, text[-2000:]
    assert steps.totals == {"one": 1, "stage-1": 2} and len(steps.finished) == 3, text[-2000:]
    assert seen[-1].startswith("image build: ") and "step 3/3" in seen[-1]
    assert token in (tmp_path / "build.log").read_text()


@pytest.mark.docker
def test_progress_events_from_a_container_reach_the_status_line(tmp_path):
    """A real `docker run` through DockerLauncher: the container's events stream out as it prints them."""
    import subprocess

    from bench.docker import DockerLauncher, docker_binary

    docker = docker_binary()
    if subprocess.run([docker, "info"], capture_output=True).returncode != 0:
        pytest.skip("no Docker engine reachable (containers/provision.sh starts one on Debian)")
    base = "debian:bookworm-slim"
    if subprocess.run([docker, "image", "inspect", base], capture_output=True).returncode != 0:
        pytest.skip(f"no local {base} image (containers/provision.sh makes one)")
    (tmp_path / "matrix.toml").write_text("")
    events = [
        ProgressEvent(what="calibrate", done=i, total=3, elapsed_s=i, eta_s=3 - i, unit="batch").line() for i in (1, 2)
    ]
    # The image has no Python: the job is a shell printing what a Python job would.
    script = f"echo 'calibrating'; echo '{events[0]}'; sleep 1; echo '{events[1]}'"
    launcher = DockerLauncher(
        image=base, matrix=tmp_path / "matrix.toml", artifacts=tmp_path / "a", results=tmp_path / "r", docker=docker
    )
    screen = io.StringIO()
    job = Job(kind="build", name="build tiny/ort-int8-static", argv=["sh", "-c", script])
    [job] = execute(
        Plan(jobs=[job], cells=0), launcher, Store(tmp_path / "a"),
        console=Console(screen, tty=False, every=0), log_dir=tmp_path / "logs",
    )  # fmt: skip
    assert job.state == "done", job.log_tail
    assert "build tiny/ort-int8-static: calibrate: batch 1/3, ETA 2s" in screen.getvalue()
    assert "build tiny/ort-int8-static: calibrate: batch 2/3, ETA 1s" in screen.getvalue()
    assert "calibrating" not in screen.getvalue() and "calibrating" in job.log_path.read_text()
